// Unit tests of the dashboard's pure helpers (no browser needed): node --test format.test.mjs

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { bytes, countdown, duration, fileMode, initials, joinPath, mib, normalizePath, parentPath, parseKeyValues, splitCommand, timeout } from '../format.js';
import { segments } from '../chart.js';

test('commands split like a shell would, without a shell', () => {
  assert.deepEqual(splitCommand('uname -a'), ['uname', '-a']);
  assert.deepEqual(splitCommand(`sh -c 'echo "$X" | wc -c'`), ['sh', '-c', 'echo "$X" | wc -c']);
  assert.deepEqual(splitCommand(`echo "a \\"b\\"" c\\ d ''`), ['echo', 'a "b"', 'c d', '']);
  assert.deepEqual(splitCommand('   '), []);
  assert.throws(() => splitCommand(`echo 'oops`), /unclosed single quote/);
});

test('KEY=VALUE lines name the bad line', () => {
  assert.deepEqual(parseKeyValues('A=1\n\n# note\nB = x=y\n', 'Env'), { A: '1', B: ' x=y' });
  assert.throws(() => parseKeyValues('A=1\nnope', 'Env'), /Env, line 2: expected KEY=VALUE/);
  assert.throws(() => parseKeyValues('1A=x', 'Env', (k) => (/^\d/.test(k) ? 'bad name' : null)), /line 1: bad name/);
});

test('numbers read like a person would say them', () => {
  assert.equal(duration(42), '42s');
  assert.equal(duration(3 * 3600 + 240), '3h 4m');
  assert.equal(duration(2 * 86400), '2d');
  assert.equal(mib(256), '256 MiB');
  assert.equal(mib(3891), '3.8 GiB');
  assert.equal(timeout(0), 'never');
  assert.equal(timeout(300), '5m');
  assert.equal(initials('Ada Lovelace'), 'AL');
  assert.equal(initials(''), '?');
});

test('sizes, countdowns and permission bits', () => {
  assert.equal(bytes(0), '0 B');
  assert.equal(bytes(1023), '1023 B');
  assert.equal(bytes(1536), '1.5 KiB');
  assert.equal(bytes(200 * 1024 * 1024), '200 MiB');
  assert.equal(bytes(null), '—');
  assert.equal(countdown(45), '45s');
  assert.equal(countdown(245), '4m 05s');
  assert.equal(countdown(3 * 3600 + 240), '3h 4m');
  assert.equal(countdown(-3), '0s');
  assert.equal(fileMode(0o755, 'dir'), 'drwxr-xr-x');
  assert.equal(fileMode(0o644, 'file'), '-rw-r--r--');
  assert.equal(fileMode(0o777, 'symlink'), 'lrwxrwxrwx');
});

test('paths in a sandbox stay absolute and plain', () => {
  assert.equal(joinPath('/', 'a'), '/a');
  assert.equal(joinPath('/a/', 'b'), '/a/b');
  assert.equal(parentPath('/a/b'), '/a');
  assert.equal(parentPath('/a'), '/');
  assert.equal(parentPath('/'), '/');
  assert.equal(normalizePath('/a//b/./c/../'), '/a/b');
  assert.equal(normalizePath('x/y', '/root'), '/root/x/y');
  assert.equal(normalizePath('../..', '/a'), '/');
  assert.equal(normalizePath(''), '/');
});

test('chart lines break where samples are missing (a paused sandbox)', () => {
  const pts = [[0, 1], [5, 2], [10, 3], [60, 4], [65, 5]];
  assert.deepEqual(segments(pts, 15), [pts.slice(0, 3), pts.slice(3)]);
  assert.deepEqual(segments([], 15), []);
});
