// Renders chat templates with @huggingface/jinja, the reference test_chat_template compares
// ce::ChatTemplate against byte for byte.
//
//   node chat_template_reference.mjs NPM_DIR TEMPLATE_FILE VARIABLES_JSON
//       prints the rendering of one template (exit status 3 and the message on stderr when the
//       template fails);
//   node chat_template_reference.mjs NPM_DIR CASES_JSON RESULTS_JSON --batch
//       renders every case of {"now": ISO time or null, "cases": [{"template", "variables"}]}
//       and writes [{"ok": true, "output"} or {"ok": false, "error"}], one per case.
//
// NPM_DIR is where install-references.sh installed the npm packages (BUILD_DIR/npm-text).
// "now" fixes the clock strftime_now() reads, in UTC, so that renderings are reproducible.
import fs from "node:fs";
import path from "node:path";
import { pathToFileURL } from "node:url";

const [npmDir, first, second, mode] = process.argv.slice(2);
if (!npmDir || !first || !second) {
  console.error("usage: chat_template_reference.mjs NPM_DIR TEMPLATE_FILE VARIABLES_JSON");
  console.error("       chat_template_reference.mjs NPM_DIR CASES_JSON RESULTS_JSON --batch");
  process.exit(2);
}
const jinja = path.join(npmDir, "node_modules", "@huggingface", "jinja", "dist", "index.js");
const { Template } = await import(pathToFileURL(jinja).href);

// strftime_now() formats `new Date()` in local time: pin both the instant and the time zone.
function fixClock(iso) {
  if (!iso) return;
  process.env.TZ = "UTC";
  const RealDate = Date;
  const fixed = new RealDate(iso).getTime();
  globalThis.Date = class extends RealDate {
    constructor(...args) {
      super(...(args.length ? args : [fixed]));
    }
    static now() {
      return fixed;
    }
  };
}

function render(template, variables) {
  try {
    return { ok: true, output: new Template(template).render(variables) };
  } catch (error) {
    return { ok: false, error: String(error && error.message ? error.message : error) };
  }
}

if (mode === "--batch") {
  const { now = null, cases } = JSON.parse(fs.readFileSync(first, "utf8"));
  fixClock(now);
  const results = cases.map(({ template, variables }) => render(template, variables));
  fs.writeFileSync(second, JSON.stringify(results));
} else {
  const result = render(fs.readFileSync(first, "utf8"), JSON.parse(fs.readFileSync(second, "utf8")));
  if (result.ok) {
    process.stdout.write(result.output);
  } else {
    console.error(result.error);
    process.exitCode = 3; // not process.exit(): that can cut off the message on a pipe
  }
}
