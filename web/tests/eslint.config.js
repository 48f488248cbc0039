// The dashboard's JavaScript check (run by `./install.sh --test` before the test suite): the browser
// modules in web/ and the Node tests here, with ESLint's recommended rules. Paths are relative to
// web/, where `npm run lint` runs it.
import js from '@eslint/js';
import globals from 'globals';

export default [
  {
    ignores: ['tests/node_modules/**', 'vendor/**'],
  },
  js.configs.recommended,
  {
    files: ['*.js', 'pages/*.js'],
    languageOptions: { sourceType: 'module', globals: { ...globals.browser } },
  },
  {
    // Node tests; what they pass to page.evaluate runs in the browser.
    files: ['tests/*.mjs', 'tests/*.js'],
    languageOptions: { sourceType: 'module', globals: { ...globals.node, ...globals.browser } },
  },
];
