// The live terminal: a shell on a PTY in the sandbox, over the exec WebSocket
// (GET /v1/sandboxes/{id}/exec/stream, the token as the subprotocol bearer.TOKEN since browsers
// cannot set headers there). The emulator is xterm.js, vendored in web/vendor/xterm/ and loaded the first
// time a terminal opens.
//
// The stream: we send {"type":"start",…,"pty":{rows,cols}} first, then keystrokes as binary
// messages [0, …utf-8 bytes] and {"type":"resize",rows,cols}; we get binary [1|2, …bytes] (the
// terminal's output) and text {"type":"started"|"exit"|"error",…}.

import { api, execStreamProtocols, execStreamUrl, isAbort } from '../api.js';
import { alertBox, button, errorText, h } from '../ui.js';
import { pendingOp } from './sandbox-actions.js';

const SHELL = { cmd: '/bin/sh', args: ['-l'], env: { TERM: 'xterm-256color' } };
const STDIN = 0;
const OUTPUT = new Set([1, 2]);

let loading = null;

/** Loads xterm.js, its stylesheet and the fit addon once (plain script and link tags). */
export function loadXterm() {
  if (window.Terminal && window.FitAddon) return Promise.resolve();
  loading ??= Promise.all([
    addTag('link', { rel: 'stylesheet', href: '/vendor/xterm/xterm.css' }),
    addTag('script', { src: '/vendor/xterm/xterm.js' }),
    addTag('script', { src: '/vendor/xterm/addon-fit.js' }),
  ]).catch((err) => {
    loading = null;
    throw err;
  });
  return loading;
}

function addTag(tag, attrs) {
  const existing = document.head.querySelector(`${tag}[${attrs.src ? 'src' : 'href'}="${attrs.src ?? attrs.href}"]`);
  if (existing?.dataset.loaded) return Promise.resolve();
  return new Promise((resolve, reject) => {
    const el = existing ?? document.createElement(tag);
    el.addEventListener('load', () => {
      el.dataset.loaded = '1';
      resolve();
    });
    el.addEventListener('error', () => {
      el.remove();
      reject(new Error('The terminal emulator did not load. Check the connection to the server and try again.'));
    });
    if (!existing) {
      if (tag === 'script') el.async = false;
      for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
      document.head.append(el);
    }
  });
}

const THEME = {
  background: '#0b1220',
  foreground: '#e2e8f0',
  cursor: '#a5b4fc',
  cursorAccent: '#0b1220',
  selectionBackground: '#334155',
  black: '#1e293b',
  brightBlack: '#64748b',
};

export const terminalPanel = {
  id: 'terminal',
  label: 'Terminal',
  icon: 'terminal',
  render(s, ctx) {
    let sandbox = s;
    let term = null;
    let fit = null;
    let ws = null;
    let state = 'idle'; // idle | loading | connecting | open | closed
    let exitInfo = null;
    const encoder = new TextEncoder();

    const status = h('span', { class: 'term-status', role: 'status', 'aria-live': 'polite' });
    const dot = h('span', { class: 'term-dot', 'aria-hidden': 'true' });
    const connect = button('Connect', { variant: 'primary', icon: 'terminal', small: true, onclick: () => open() });
    const disconnect = button('Disconnect', { small: true, onclick: () => close('You disconnected.') });
    const alert = alertBox();
    const screen = h('div', { class: 'term-screen', 'aria-label': 'Terminal' });
    const placeholder = h('div', { class: 'term-placeholder' }, h('p', {}, 'A shell (', h('code', {}, '/bin/sh'), ') on a terminal in this sandbox.'));
    screen.append(placeholder);
    const hint = h('p', { class: 'muted small term-hint' }, 'The terminal takes every key, Tab included: press Esc, then Tab, to move on from it.');

    function setState(next, text) {
      state = next;
      status.textContent = text;
      dot.className = `term-dot term-dot-${next}`;
      const running = sandbox.status === 'running';
      connect.hidden = next === 'open' || next === 'connecting' || next === 'loading';
      connect.disabled = !running;
      connect.querySelector('span:last-child').textContent = next === 'closed' ? 'Reconnect' : 'Connect';
      disconnect.hidden = !(next === 'open' || next === 'connecting');
      screen.classList.toggle('term-live', next === 'open');
    }

    function idleText() {
      return sandbox.status === 'running' ? 'Not connected.' : `The terminal works while the sandbox runs; it is ${sandbox.status}.`;
    }

    function send(data) {
      if (ws?.readyState === WebSocket.OPEN) ws.send(data);
    }

    function sendInput(bytes) {
      const msg = new Uint8Array(bytes.length + 1);
      msg[0] = STDIN;
      msg.set(bytes, 1);
      send(msg);
    }

    function createTerminal() {
      placeholder.remove();
      term = new window.Terminal({
        cursorBlink: true,
        fontFamily: "ui-monospace, SFMono-Regular, 'DejaVu Sans Mono', Menlo, Consolas, monospace",
        fontSize: 13,
        lineHeight: 1.15,
        scrollback: 5000,
        theme: THEME,
      });
      fit = new window.FitAddon.FitAddon();
      term.loadAddon(fit);
      term.open(screen);
      term.onData((d) => sendInput(encoder.encode(d)));
      term.onBinary((d) => sendInput(Uint8Array.from(d, (c) => c.charCodeAt(0) & 0xff)));
      term.onResize(({ rows, cols }) => state === 'open' && send(JSON.stringify({ type: 'resize', rows, cols })));
      // Esc then Tab leaves the terminal (the Tab goes to the browser, not the shell).
      let escAt = 0;
      term.attachCustomKeyEventHandler((e) => {
        if (e.type !== 'keydown') return true;
        if (e.key === 'Escape') {
          escAt = Date.now();
          return true;
        }
        const leave = e.key === 'Tab' && Date.now() - escAt < 2000;
        escAt = 0;
        return !leave;
      });
      const observer = new ResizeObserver(() => refit());
      observer.observe(screen);
      ctx.onCleanup(() => observer.disconnect());
    }

    let fitQueued = false;
    function refit() {
      if (fitQueued || !fit) return;
      fitQueued = true;
      requestAnimationFrame(() => {
        fitQueued = false;
        // A hidden tab has no size: fit when it is shown again.
        if (screen.offsetParent === null) return;
        try {
          fit.fit();
        } catch {
          // not measurable yet
        }
      });
    }

    async function open() {
      if (state === 'loading' || state === 'connecting' || state === 'open') return;
      alert.clear();
      exitInfo = null;
      setState('loading', 'Loading the terminal…');
      try {
        await loadXterm();
      } catch (err) {
        setState('idle', idleText());
        return alert.show(err);
      }
      if (ctx.signal.aborted) return;
      if (!term) createTerminal();
      else term.reset();
      fit.fit();
      setState('connecting', 'Connecting…');
      const socket = new WebSocket(execStreamUrl(sandbox.id), execStreamProtocols());
      socket.binaryType = 'arraybuffer';
      ws = socket;
      let opened = false;
      socket.addEventListener('open', () => {
        opened = true;
        socket.send(JSON.stringify({ type: 'start', ...SHELL, pty: { rows: term.rows, cols: term.cols } }));
      });
      socket.addEventListener('message', (e) => {
        if (socket !== ws) return;
        if (typeof e.data !== 'string') {
          const bytes = new Uint8Array(e.data);
          if (state === 'connecting') setState('open', 'Connected: /bin/sh');
          if (bytes.length > 1 && OUTPUT.has(bytes[0])) term.write(bytes.subarray(1));
          return;
        }
        let msg;
        try {
          msg = JSON.parse(e.data);
        } catch {
          return;
        }
        if (msg.type === 'started') {
          setState('open', 'Connected: /bin/sh');
          term.focus();
        } else if (msg.type === 'exit') {
          exitInfo = msg;
        } else if (msg.type === 'error') {
          exitInfo = { error: msg };
        }
      });
      socket.addEventListener('close', async (e) => {
        if (socket !== ws) return;
        ws = null;
        if (!opened && !exitInfo) {
          setState('closed', 'Could not connect.');
          return alert.show(await whyNot());
        }
        if (exitInfo && !exitInfo.error) {
          const how = exitInfo.signal ? `was killed by signal ${exitInfo.signal}` : `exited with code ${exitInfo.exit_code}`;
          term.write(`\r\n\x1b[90m[the shell ${how}]\x1b[0m\r\n`);
          return setState('closed', `The shell ${how}.`);
        }
        if (state === 'closed') return; // closed on purpose
        setState('closed', 'Disconnected.');
        // Pausing (here, in another tab or by the idle timeout) ends the shell: say so, calmly.
        const why = await endedBecause();
        if (why) {
          term.write(`\r\n\x1b[90m[${why}]\x1b[0m\r\n`);
          return setState('closed', `${why[0].toUpperCase()}${why.slice(1)}.`);
        }
        if (exitInfo?.error) {
          const m = exitInfo.error;
          alert.show(sentence(m.message || m.code || 'The terminal failed.'));
          term.write('\r\n\x1b[90m[the terminal stopped with an error]\x1b[0m\r\n');
          return setState('closed', 'The terminal stopped with an error.');
        }
        term.write('\r\n\x1b[90m[connection closed]\x1b[0m\r\n');
        setState('closed', e.reason ? `Disconnected: ${e.reason}` : 'Disconnected.');
        alert.show(await whyNot(), 'warn');
      });
    }

    /** Why the shell ended when the sandbox stopped running under it, or null. */
    async function endedBecause() {
      const op = pendingOp(sandbox.id);
      if (op) return `the shell ended: the sandbox is ${op.action.busy.toLowerCase()}`;
      try {
        const s = await api.sandbox(sandbox.id, { signal: ctx.signal });
        return s.status === 'running' ? null : `the shell ended: the sandbox is ${s.status}`;
      } catch {
        return null;
      }
    }

    /** The server's reason for refusing the stream, asked with a plain request. */
    async function whyNot() {
      try {
        const s = await api.sandbox(sandbox.id, { signal: ctx.signal });
        if (s.status !== 'running') return `The sandbox is ${s.status}: the terminal works while it runs.`;
        await api.probeExecStream(sandbox.id, { signal: ctx.signal });
      } catch (err) {
        if (isAbort(err)) return '';
        // The route answers a plain GET with 400 "WebSocket only" when all is well otherwise.
        if (!(err.status === 400 && err.field === 'upgrade')) return errorText(err);
      }
      return 'The connection to the sandbox ended. Check that the server is reachable, then reconnect.';
    }

    function close(text) {
      const socket = ws;
      ws = null;
      if (socket) socket.close(1000, 'closed by the user');
      if (term) term.write('\r\n\x1b[90m[disconnected]\x1b[0m\r\n');
      setState('closed', text);
    }

    ctx.onCleanup(() => {
      const socket = ws;
      ws = null;
      socket?.close(1000, 'page left');
      term?.dispose();
    });

    const el = h(
      'div',
      { class: 'stack term-panel' },
      h('div', { class: 'term-bar' }, dot, status, h('span', { class: 'toolbar-spacer' }), connect, disconnect),
      alert,
      screen,
      hint,
    );
    el._update = (next) => {
      sandbox = next;
      if (state === 'idle') setState('idle', idleText());
      else connect.disabled = sandbox.status !== 'running';
    };
    el._shown = () => {
      refit();
      if (state === 'open') term.focus();
    };
    setState('idle', idleText());
    return el;
  },
  update(el, s) {
    el._update(s);
  },
  shown(el) {
    el._shown();
  },
};

function sentence(msg) {
  const m = String(msg).trim();
  const s = m[0].toUpperCase() + m.slice(1);
  return /[.!?]$/.test(s) ? s : `${s}.`;
}

