// Formatting of the API's values for people. Timestamps from the API are Unix seconds.

const now = () => Math.floor(Date.now() / 1000);

/** "42s", "12m", "3h 4m", "2d 5h". */
export function duration(seconds) {
  const s = Math.max(0, Math.floor(seconds));
  if (s < 60) return `${s}s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m`;
  const hrs = Math.floor(m / 60);
  if (hrs < 24) return m % 60 ? `${hrs}h ${m % 60}m` : `${hrs}h`;
  const d = Math.floor(hrs / 24);
  return hrs % 24 ? `${d}d ${hrs % 24}h` : `${d}d`;
}

/** How long ago a timestamp was: "just now", "5m ago"; "never" for none. */
export function ago(ts, never = 'never') {
  if (ts === null || ts === undefined) return never;
  const s = now() - ts;
  return s < 5 ? 'just now' : `${duration(s)} ago`;
}

export function age(ts) {
  return ts ? duration(now() - ts) : '—';
}

export function dateTime(ts) {
  if (ts === null || ts === undefined) return '—';
  return new Date(ts * 1000).toLocaleString(undefined, { dateStyle: 'medium', timeStyle: 'short' });
}

/** Megabytes as "256 MiB" or "3.8 GiB". */
export function mib(mb) {
  if (mb === null || mb === undefined) return '—';
  return mb >= 1024 ? `${+(mb / 1024).toFixed(1)} GiB` : `${mb} MiB`;
}

/** A sandbox's idle timeout: "never" for 0. */
export function timeout(sec) {
  if (!sec) return 'never';
  return duration(sec);
}

export function ms(n) {
  if (n === null || n === undefined) return '—';
  return n < 1000 ? `${n} ms` : `${(n / 1000).toFixed(n < 10000 ? 2 : 1)} s`;
}

/** Initials for an avatar: "Ada Lovelace" → "AL". */
export function initials(name) {
  const parts = (name || '?').trim().split(/\s+/);
  return ((parts[0]?.[0] ?? '') + (parts.length > 1 ? parts[parts.length - 1][0] : '')).toUpperCase() || '?';
}

export function capitalize(s) {
  return s ? s[0].toUpperCase() + s.slice(1) : s;
}

/**
 * Splits a command line into words the way a POSIX shell would (quotes and backslashes), without
 * running a shell: "sh -c 'echo hi | wc'" → ["sh", "-c", "echo hi | wc"].
 */
export function splitCommand(line) {
  const words = [];
  let cur = '';
  let inWord = false;
  let quote = null;
  for (let i = 0; i < line.length; i++) {
    const c = line[i];
    if (quote === "'") {
      if (c === "'") quote = null;
      else cur += c;
    } else if (quote === '"') {
      if (c === '"') quote = null;
      else if (c === '\\' && i + 1 < line.length && '"\\$`'.includes(line[i + 1])) cur += line[++i];
      else cur += c;
    } else if (c === "'" || c === '"') {
      quote = c;
      inWord = true;
    } else if (c === '\\' && i + 1 < line.length) {
      cur += line[++i];
      inWord = true;
    } else if (/\s/.test(c)) {
      if (inWord) words.push(cur);
      cur = '';
      inWord = false;
    } else {
      cur += c;
      inWord = true;
    }
  }
  if (quote) throw new Error(`The command has an unclosed ${quote === "'" ? 'single' : 'double'} quote.`);
  if (inWord) words.push(cur);
  return words;
}

/**
 * Parses "KEY=VALUE" lines (blank lines and # comments skipped) into an object. Throws an Error
 * naming the line when one is malformed; `checkKey` may refuse a key with a reason.
 */
export function parseKeyValues(text, what, checkKey) {
  const out = {};
  text.split('\n').forEach((raw, i) => {
    const line = raw.trim();
    if (!line || line.startsWith('#')) return;
    const eq = line.indexOf('=');
    if (eq <= 0) throw new Error(`${what}, line ${i + 1}: expected KEY=VALUE, got "${line}".`);
    const key = line.slice(0, eq).trim();
    const why = checkKey?.(key);
    if (why) throw new Error(`${what}, line ${i + 1}: ${why}`);
    out[key] = line.slice(eq + 1);
  });
  return out;
}

/** Bytes as "512 B", "1.5 KiB", "3.2 MiB", "1.1 GiB". */
export function bytes(n) {
  if (n === null || n === undefined) return '—';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = n;
  let u = 0;
  while (v >= 1024 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  return u === 0 ? `${v} B` : `${v >= 100 ? Math.round(v) : +v.toFixed(1)} ${units[u]}`;
}

/** A countdown with seconds while it is short: "45s", "4m 05s", "1h 12m", "2d 3h". */
export function countdown(seconds) {
  const s = Math.max(0, Math.floor(seconds));
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${String(s % 60).padStart(2, '0')}s`;
  return duration(s);
}

/** Permission bits as ls shows them: (493, 'dir') → "drwxr-xr-x". */
export function fileMode(mode, kind) {
  const type = { dir: 'd', symlink: 'l', file: '-' }[kind] ?? '?';
  let out = type;
  for (let shift = 6; shift >= 0; shift -= 3) {
    const b = (mode >> shift) & 7;
    out += (b & 4 ? 'r' : '-') + (b & 2 ? 'w' : '-') + (b & 1 ? 'x' : '-');
  }
  return out;
}

/** Joins a directory and a name into an absolute path: ("/", "a") → "/a", ("/a", "b") → "/a/b". */
export function joinPath(dir, name) {
  return dir === '/' ? `/${name}` : `${dir.replace(/\/+$/, '')}/${name}`;
}

/** The parent of an absolute path: "/a/b" → "/a", "/a" → "/", "/" → "/". */
export function parentPath(path) {
  const p = path.replace(/\/+$/, '');
  const i = p.lastIndexOf('/');
  return i <= 0 ? '/' : p.slice(0, i);
}

/**
 * Cleans a path someone typed into the absolute form the API accepts ("/a/b"): resolves "." and
 * "..", drops repeated and trailing slashes. Relative paths count from `base`.
 */
export function normalizePath(input, base = '/') {
  const raw = input.trim();
  const parts = [];
  for (const seg of (raw.startsWith('/') ? raw : `${base}/${raw}`).split('/')) {
    if (!seg || seg === '.') continue;
    if (seg === '..') parts.pop();
    else parts.push(seg);
  }
  return `/${parts.join('/')}`;
}
