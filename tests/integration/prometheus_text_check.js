// Parses a Prometheus text exposition (stdin) with parse-prometheus-text-format, an independent
// parser from npm, adds the format rules that parser lets pass, and prints the families as JSON:
//   node prometheus_text_check.js NPM_DIR < metrics.txt
// Exit 1 with the reason on stderr when the text breaks a rule:
//   - a line the parser refuses (bad labels, bad escapes, ...);
//   - a family declared twice (# TYPE repeated, or samples of one name in two places);
//   - a TYPE other than counter, gauge, histogram (what /metrics uses);
//   - a sample value or histogram count/sum/bucket that is not a Go float (digits, NaN, +Inf);
//   - histogram buckets that are not cumulative, or a +Inf bucket that differs from _count;
//   - a metric or label name outside [a-zA-Z_:][a-zA-Z0-9_:]* ([a-zA-Z_][a-zA-Z0-9_]* for labels).
'use strict';
const path = require('path');
const parse = require(path.join(process.argv[2], 'node_modules', 'parse-prometheus-text-format'));

const text = require('fs').readFileSync(0, 'utf8');
const fail = (why) => {
  process.stderr.write('prometheus text: ' + why + '\n');
  process.exit(1);
};
const isFloat = (v) => typeof v === 'string' && /^([-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?|NaN|[-+]Inf)$/.test(v);
const metricName = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/;
const labelName = /^[a-zA-Z_][a-zA-Z0-9_]*$/;

// Each family's # TYPE appears once, and its samples follow it in one block.
const typed = new Set();
for (const line of text.split('\n')) {
  const m = /^# TYPE (\S+) (\S+)$/.exec(line);
  if (!m) continue;
  if (typed.has(m[1])) fail('# TYPE ' + m[1] + ' twice');
  typed.add(m[1]);
}

let families;
try {
  families = parse(text);
} catch (e) {
  fail(e.message);
}
const seen = new Set();
const out = {};
for (const f of families) {
  if (seen.has(f.name)) fail('family ' + f.name + ' in two places');
  seen.add(f.name);
  if (!metricName.test(f.name)) fail('bad metric name ' + f.name);
  const type = f.type.toLowerCase();
  if (!['counter', 'gauge', 'histogram'].includes(type)) fail(f.name + ' has type ' + f.type);
  for (const m of f.metrics) {
    for (const k of Object.keys(m.labels || {})) if (!labelName.test(k)) fail(f.name + ': bad label name ' + k);
    if (m.timestamp_ms !== undefined) fail(f.name + ': a sample with a timestamp or a third field');
    if (type === 'histogram') {
      if (!isFloat(m.count) || !isFloat(m.sum)) fail(f.name + ': count/sum not numbers');
      const bounds = Object.keys(m.buckets || {});
      if (!bounds.includes('+Inf')) fail(f.name + ': no +Inf bucket');
      let last = -1;
      const sorted = bounds.map((b) => [b === '+Inf' ? Infinity : Number(b), m.buckets[b]]).sort((a, b) => a[0] - b[0]);
      for (const [b, v] of sorted) {
        if (!isFloat(v) || Number.isNaN(b)) fail(f.name + ': bucket ' + b + ' = ' + v);
        if (Number(v) < last) fail(f.name + ': buckets not cumulative');
        last = Number(v);
      }
      if (m.buckets['+Inf'] !== m.count) fail(f.name + ': +Inf bucket ' + m.buckets['+Inf'] + ' != count ' + m.count);
    } else if (!isFloat(m.value)) {
      fail(f.name + ': value ' + m.value);
    }
  }
  out[f.name] = { type, help: f.help, metrics: f.metrics };
}
for (const name of typed) if (!seen.has(name)) fail('# TYPE ' + name + ' without its family');
process.stdout.write(JSON.stringify(out));
