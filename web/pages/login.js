// Sign in and create an account (POST /v1/auth/login, /v1/auth/signup). The sign-up page follows
// the server's rule (GET /v1/auth/providers): an invite link or token where one is needed, the
// bootstrap token for the first account, and a plain explanation where no one may sign up.

import { api } from '../api.js';
import { alertBox, busy, button, field, fill, h, icon, markField } from '../ui.js';

export default {
  title: (ctx) => (ctx.props.mode === 'signup' ? 'Create an account' : 'Sign in'),
  render(ctx) {
    const signup = ctx.props.mode === 'signup';
    const alert = alertBox();
    const flash = ctx.app.takeFlash();
    if (flash) alert.info(flash);

    const name = h('input', { name: 'name', autocomplete: 'name', required: true, maxlength: 100 });
    const email = h('input', { name: 'email', type: 'email', autocomplete: 'email', required: true, spellcheck: 'false' });
    const password = h('input', {
      name: 'password',
      type: 'password',
      autocomplete: signup ? 'new-password' : 'current-password',
      required: true,
      minlength: signup ? 8 : null,
    });
    const submit = button(signup ? 'Create account' : 'Sign in', { variant: 'primary', type: 'submit', class: 'btn btn-primary btn-block' });
    const pending = ctx.app.pending;
    const invite = h('input', { name: 'invite', autocomplete: 'off', spellcheck: 'false', placeholder: 'https://…/#invite=sbi_…', value: pending.invite ?? '' });
    const inviteField = field('Invite link or token', invite, 'From the team owner or admin who invited you.');
    const bootstrap = h('input', { name: 'bootstrap_token', autocomplete: 'off', spellcheck: 'false', value: pending.bootstrap ?? '' });
    const bootstrapField = field('Bootstrap token', bootstrap, 'Printed by the server at start (and in its data dir, bootstrap-token). Not needed on the server’s own machine.');
    bootstrapField.hidden = true;
    const rule = h('p', { class: 'muted', hidden: true });
    const closed = h('div', { class: 'alert alert-info', role: 'status', hidden: true });

    const form = h(
      'form',
      {
        class: 'stack',
        novalidate: true,
        async onsubmit(e) {
          e.preventDefault();
          alert.clear();
          const missing = [signup && !name.value.trim() && 'your name', !email.value.trim() && 'your email', !password.value && 'a password'].filter(Boolean);
          if (missing.length) return alert.show(`Please enter ${missing.join(' and ')}.`);
          if (signup && password.value.length < 8) {
            markField(form, { field: 'password' });
            return alert.show('The password must be at least 8 characters.');
          }
          try {
            await busy(submit, signup ? 'Creating account…' : 'Signing in…', async () => {
              const inviteToken = inviteTokenOf(invite.value);
              const auth = signup
                ? await api.signup({
                    name: name.value.trim(),
                    email: email.value.trim(),
                    password: password.value,
                    invite: inviteField.hidden || !inviteToken ? undefined : inviteToken,
                    bootstrap_token: bootstrapField.hidden || !bootstrap.value.trim() ? undefined : bootstrap.value.trim(),
                  })
                : await api.login({ email: email.value.trim(), password: password.value });
              // Used by the signup: nothing is left to accept afterwards.
              if (signup && inviteToken && !inviteField.hidden) pending.invite = null;
              if (signup) pending.bootstrap = null;
              await ctx.app.signIn(auth);
            });
          } catch (err) {
            if (!signup && err.status === 401) alert.show('Wrong email or password.');
            else alert.show(err);
            markField(form, err);
          }
        },
      },
      signup && field('Name', name),
      field('Email', email),
      field('Password', password, signup ? 'At least 8 characters.' : null),
      signup && inviteField,
      signup && bootstrapField,
      alert,
      submit,
    );
    const intro = h('p', { class: 'muted' }, signup ? 'Your account comes with a personal team.' : 'MicroVM sandboxes on your own hosts.');
    if (!signup && pending.invite) alert.info('Sign in to accept your invite, or create an account with it.');

    // Other ways in, and who may sign up here.
    const providers = h('div', { class: 'stack', hidden: true });
    api.providers({ signal: ctx.signal }).then(
      (p) => {
        if (signup) explainRule(p);
        if (!p?.github || (signup && p.signup !== 'open')) return;
        providers.append(h('a', { class: 'btn btn-secondary btn-block', href: '/v1/auth/github/start' }, 'Continue with GitHub'), h('p', { class: 'divider' }, h('span', {}, 'or')));
        providers.hidden = false;
      },
      () => {},
    );

    function explainRule(p) {
      const invited = Boolean(inviteTokenOf(invite.value));
      if (p.bootstrap) {
        inviteField.hidden = true;
        bootstrapField.hidden = false;
        intro.textContent = 'This server has no account yet: the first one becomes its platform admin.';
        fill(rule, 'From the server’s own machine no token is needed; from anywhere else, enter the bootstrap token the server printed when it started.');
        rule.hidden = false;
      } else if (p.signup === 'closed') {
        fill(closed, h('strong', {}, 'This server does not take new accounts.'), ' Its operator turned sign-ups off. If you have an account, sign in; otherwise ask the operator.');
        closed.hidden = false;
        form.hidden = true;
        intro.hidden = true;
      } else if (p.signup === 'invite') {
        intro.textContent = 'You join the team that invited you.';
        if (!invited) {
          fill(rule, 'New accounts need an invite: ask a team owner or admin for an invite link, then open it or paste it below.');
          rule.hidden = false;
        }
      } else {
        intro.textContent = invited ? 'You join the team that invited you.' : 'Your account comes with a personal team.';
        inviteField.querySelector('small')?.replaceChildren('Optional: join a team that invited you (instead of getting a personal team).');
      }
    }

    return h(
      'section',
      { class: 'card auth-card' },
      h('div', { class: 'auth-brand' }, icon('logo', 'brand-logo'), h('span', {}, 'sandboxctl')),
      h('h1', { tabindex: '-1' }, signup ? 'Create your account' : 'Sign in'),
      intro,
      rule,
      closed,
      providers,
      form,
      h('p', { class: 'auth-switch' }, signup ? 'Already have an account? ' : 'New here? ', h('a', { href: signup ? '/login' : '/signup' }, signup ? 'Sign in' : 'Create an account')),
    );
  },
};

/** The token in an invite link (`…/#invite=TOKEN`), or what was typed. */
function inviteTokenOf(value) {
  const v = value.trim();
  const at = v.lastIndexOf('invite=');
  return at >= 0 ? v.slice(at + 'invite='.length).split('&')[0] : v;
}
