/**
 * The committed stubs (src/gen, test/gen) are exactly what `npm run generate` writes
 * from protos/ today, as the Python stubs are checked by tests/test_generated_code.py.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { join } from "node:path";
import { test } from "node:test";

import { PACKAGE_ROOT } from "./support/server.js";

test("the committed generated code is fresh", () => {
  const result = spawnSync(process.execPath, [join(PACKAGE_ROOT, "scripts", "generate.mjs"), "--check"], {
    cwd: PACKAGE_ROOT,
    encoding: "utf8",
    timeout: 120_000,
  });
  assert.equal(result.status, 0, `${result.stdout}${result.stderr}`);
});
