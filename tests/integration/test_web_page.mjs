// The web page at / in headless Chromium (run by test_web_page.sh):
//   node test_web_page.mjs BASE_URL NPM_DIR CHROMIUM SCREENSHOT_DIR
// Loads the page from a running edge (its defaults from /health), sets θ, mode, max tokens and the
// prompt as a user would, clicks Generate and waits for the finish line; then checks the DOM
// against the same completion asked of the API directly (greedy, so the same tokens): the text,
// one span per token with its source class and exit layer, confidence on hover, the counters
// (tokens, offload share, uploaded bytes) and the finish line. Collaborative at the shipped
// model's θ 0.83 (edge and cloud tokens both), standalone (edge only, nothing uploaded), a request
// the server refuses (its error shown), and that nothing is loaded from elsewhere.
import { createRequire } from 'node:module';
import path from 'node:path';
import assert from 'node:assert/strict';

const [base, npmDir, chromium, shots] = process.argv.slice(2);
const require = createRequire(path.join(npmDir, 'package.json'));
const puppeteer = require('puppeteer-core');

const prompt = 'He looked at the';
const maxTokens = 48;
const rank = { edge: 0, cloud: 1, degraded: 2 };

// The same completion from the API, not streamed.
async function direct(mode, threshold) {
  const r = await fetch(new URL('v1/completions', base), {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ prompt, max_tokens: maxTokens, x_ce: { mode, threshold } }),
  });
  assert.equal(r.status, 200);
  return r.json();
}

const browser = await puppeteer.launch({
  executablePath: chromium,
  headless: true,
  args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage', '--no-first-run'],
  defaultViewport: { width: 1000, height: 700 },
});
const problems = [];
try {
  const page = await browser.newPage();
  page.on('pageerror', (e) => problems.push('page error: ' + e.message));
  let refusals = 0;  // the browser logs each response >= 400 as an error: expected for the refused request
  page.on('console', (m) => {
    if (m.type() !== 'error') return;
    if (/Failed to load resource: the server responded with a status of 400/.test(m.text())) refusals += 1;
    else problems.push('console error: ' + m.text());
  });
  const posted = [];
  page.on('request', (req) => {
    if (!req.url().startsWith(base) && !req.url().startsWith('data:')) problems.push('request outside the node: ' + req.url());
    if (req.method() === 'POST') posted.push(JSON.parse(req.postData()));
  });

  const response = await page.goto(base, { waitUntil: 'load' });
  assert.equal(response.status(), 200);
  assert.match(response.headers()['content-type'], /^text\/html; charset=utf-8$/);
  assert.equal(await page.title(), 'cecollm');
  // /health filled in the server line and its defaults: the shipped model's θ and the node's mode.
  await page.waitForFunction(() => document.getElementById('server').textContent.includes('cloud connected'),
                             { timeout: 20000 });
  assert.equal(await page.$eval('#theta', (e) => e.value), '0.83');
  assert.equal(await page.$eval('#mode', (e) => e.value), 'collaborative');

  // Fills the form as a user would, clicks Generate and waits for the finish line (or an error).
  async function run(mode, theta, tokens = maxTokens) {
    await page.select('#mode', mode);
    for (const [id, value] of [['#theta', theta], ['#max-tokens', tokens], ['#prompt', prompt]]) {
      await page.$eval(id, (e) => { e.value = ''; });
      await page.type(id, String(value));
    }
    await page.click('#generate');
    await page.waitForFunction(
      () => !document.getElementById('finish').hidden || !document.getElementById('error').hidden,
      { timeout: 90000 });
    await page.waitForFunction(() => !document.getElementById('generate').disabled, { timeout: 10000 });
    return page.evaluate(() => {
      const out = document.getElementById('output');
      const promptSpan = out.querySelector('.prompt');
      const text = (id) => document.getElementById(id).textContent;
      return {
        prompt: promptSpan ? promptSpan.textContent : null,
        generated: out.textContent.slice(promptSpan ? promptSpan.textContent.length : 0),
        spans: [...out.querySelectorAll('.tok')].map((s) => ({
          cls: s.className, text: s.textContent, title: s.title, layers: s.dataset.layer.split(',').map(Number),
        })),
        finish: document.getElementById('finish').hidden ? null : text('finish'),
        reason: document.getElementById('finish').dataset.reason,
        error: document.getElementById('error').hidden ? null : text('error'),
        tokens: text('tokens'), edge: text('edge-count'), cloud: text('cloud-count'),
        degraded: text('degraded-count'), offload: text('offload'), bytes: text('bytes'),
      };
    });
  }

  // Checks the page's rendering of a completion against the API's answer to the same request.
  function check(label, got, want) {
    const x = want.x_ce;
    assert.equal(got.error, null, `${label}: error shown: ${got.error}`);
    assert.equal(got.prompt, prompt, label);
    assert.ok(got.generated.length > 0, `${label}: no text`);
    assert.equal(got.generated, want.choices[0].text, `${label}: text`);
    assert.ok(got.spans.length > 0, `${label}: no token spans`);
    // Each span holds one token (or the few whose text arrived together): its source class,
    // exit layer(s) and confidence on hover, in order, as the API reports them.
    let at = 0;
    for (const s of got.spans) {
      const mine = x.tokens.slice(at, at + s.layers.length);
      at += s.layers.length;
      assert.deepEqual(s.layers, mine.map((t) => t.layer), `${label}: layers of span "${s.text}"`);
      const source = mine.reduce((a, t) => (rank[t.source] > rank[a] ? t.source : a), mine[0].source);
      assert.equal(s.cls, 'tok ' + source, `${label}: class of span "${s.text}"`);
      assert.ok(s.title.includes('confidence ' + mine[0].confidence.toFixed(3)), `${label}: title ${s.title}`);
      assert.ok(s.title.includes('layer ' + mine[0].layer), `${label}: title ${s.title}`);
    }
    assert.equal(at, x.tokens.length, `${label}: tokens in spans`);
    assert.equal(got.spans.map((s) => s.text).join(''), got.generated, `${label}: span text`);
    // The counters.
    const count = (src) => x.tokens.filter((t) => t.source === src).length;
    assert.equal(Number(got.tokens), x.tokens.length, `${label}: token counter`);
    assert.equal(Number(got.edge), count('edge'), `${label}: edge counter`);
    assert.equal(Number(got.cloud), count('cloud'), `${label}: cloud counter`);
    assert.equal(Number(got.degraded), count('degraded'), `${label}: degraded counter`);
    assert.equal(got.offload, (100 * x.offload_share).toFixed(1) + ' %', `${label}: offload share`);
    assert.match(got.bytes, /^[0-9.]+ (B|KiB|MiB)$/, `${label}: uploaded bytes`);
    // The finish line.
    const reason = want.choices[0].finish_reason;
    assert.equal(got.reason, reason, `${label}: finish reason`);
    assert.ok(got.finish.startsWith(`finished: ${reason} · ${x.tokens.length} tokens`), `${label}: ${got.finish}`);
  }

  // Collaborative at the shipped model's θ: edge and cloud tokens both.
  const theta = 0.83;
  let got = await run('collaborative', theta);
  let want = await direct('collaborative', theta);
  console.log('collaborative, θ 0.83:', JSON.stringify({ ...got, spans: got.spans.length }));
  check('collaborative', got, want);
  assert.ok(got.spans.some((s) => s.cls === 'tok edge'), 'no edge token shown');
  assert.ok(got.spans.some((s) => s.cls === 'tok cloud'), 'no cloud token shown');
  assert.ok(got.finish.includes('collaborative at θ 0.83'), got.finish);
  assert.notEqual(got.bytes, '0 B', 'a collaborative response uploads states');
  const sent = posted.at(-1);
  assert.equal(sent.stream, true);
  assert.deepEqual(sent.x_ce, { threshold: theta, mode: 'collaborative' });
  assert.equal(sent.max_tokens, maxTokens);
  await page.screenshot({ path: path.join(shots, 'collaborative.png') });

  // Standalone: every token from an edge exit, nothing uploaded.
  got = await run('standalone', theta);
  want = await direct('standalone', theta);
  check('standalone', got, want);
  assert.ok(got.spans.every((s) => s.cls === 'tok edge'), 'a standalone token not from the edge');
  assert.equal(got.offload, '0.0 %');
  assert.equal(got.bytes, '0 B');
  await page.screenshot({ path: path.join(shots, 'standalone.png') });

  // A request the server refuses: its message shown, no finish line.
  got = await run('collaborative', theta, 100000);
  assert.ok(got.error && got.error.startsWith('HTTP 400: ') && got.error.includes('max_tokens'), got.error);
  assert.equal(got.finish, null);
  await page.screenshot({ path: path.join(shots, 'error.png') });

  assert.deepEqual(problems, []);
  assert.ok(refusals <= 1, `${refusals} requests refused`);
  console.log('web page: collaborative, standalone and a refused request shown as the API answers them;',
              'screenshots in', shots);
} catch (e) {
  console.error(problems.join('\n'));
  throw e;
} finally {
  await browser.close();
}
