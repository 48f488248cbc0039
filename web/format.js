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
