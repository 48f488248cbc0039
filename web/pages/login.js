// Sign in and create an account (POST /v1/auth/login, /v1/auth/signup).

import { api } from '../api.js';
import { alertBox, busy, button, field, h, icon, markField } from '../ui.js';

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
              const auth = signup
                ? await api.signup({ name: name.value.trim(), email: email.value.trim(), password: password.value })
                : await api.login({ email: email.value.trim(), password: password.value });
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
      alert,
      submit,
    );

    // Other ways in, when the server offers them.
    const providers = h('div', { class: 'stack', hidden: true });
    api.providers({ signal: ctx.signal }).then(
      (p) => {
        if (!p?.github) return;
        providers.append(h('a', { class: 'btn btn-secondary btn-block', href: '/v1/auth/github/start' }, 'Continue with GitHub'), h('p', { class: 'divider' }, h('span', {}, 'or')));
        providers.hidden = false;
      },
      () => {},
    );

    return h(
      'section',
      { class: 'card auth-card' },
      h('div', { class: 'auth-brand' }, icon('logo', 'brand-logo'), h('span', {}, 'sandboxctl')),
      h('h1', { tabindex: '-1' }, signup ? 'Create your account' : 'Sign in'),
      h('p', { class: 'muted' }, signup ? 'Your account comes with a personal team.' : 'MicroVM sandboxes on your own hosts.'),
      providers,
      form,
      h('p', { class: 'auth-switch' }, signup ? 'Already have an account? ' : 'New here? ', h('a', { href: signup ? '/login' : '/signup' }, signup ? 'Sign in' : 'Create an account')),
    );
  },
};
