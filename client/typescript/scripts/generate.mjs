#!/usr/bin/env node
// Generates the committed TypeScript stubs, or checks that they are fresh.
//
//   node scripts/generate.mjs          rewrite src/gen/ and test/gen/ (npm run generate)
//   node scripts/generate.mjs --check  generate into a scratch folder and compare (npm run check:generated)
//
// Both run the same buf templates (buf.gen.yaml, buf.gen.test.yaml) with the same
// local protoc-gen-es, so the check is exactly "what `npm run generate` would write".
// buf is the repository's own (.venv/bin/buf, from `make`), or $BUF.
import { execFileSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, relative, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const packageRoot = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const repoRoot = resolve(packageRoot, "..", "..");
const templates = [
  { file: "buf.gen.yaml", out: "src/gen" },
  { file: "buf.gen.test.yaml", out: "test/gen" },
];

function findBuf() {
  const buf = process.env.BUF ?? join(repoRoot, ".venv", "bin", "buf");
  if (!process.env.BUF && !existsSync(buf)) {
    throw new Error(`no buf at ${buf}: run \`make .venv/.installed\` at the repository root, or set BUF`);
  }
  return buf;
}

function generate(outputBase) {
  const buf = findBuf();
  for (const template of templates) {
    const args = ["generate", "--template", template.file];
    if (outputBase !== undefined) args.push("--output", outputBase);
    execFileSync(buf, args, { cwd: packageRoot, stdio: "inherit" });
  }
}

/** Every file under `root`, by its path relative to `root`. */
function filesUnder(root) {
  const files = new Map();
  if (!existsSync(root)) return files;
  for (const entry of readdirSync(root, { recursive: true, withFileTypes: true })) {
    if (!entry.isFile()) continue;
    const path = join(entry.parentPath ?? entry.path, entry.name);
    files.set(relative(root, path), readFileSync(path));
  }
  return files;
}

function check() {
  const scratch = mkdtempSync(join(tmpdir(), "memstore-ts-gen-"));
  try {
    generate(scratch);
    const problems = [];
    for (const { out } of templates) {
      const fresh = filesUnder(join(scratch, out));
      const committed = filesUnder(join(packageRoot, out));
      if (fresh.size === 0) problems.push(`the generator wrote nothing into ${out}`);
      for (const [path, content] of fresh) {
        const mine = committed.get(path);
        if (mine === undefined) problems.push(`missing: ${out}/${path}`);
        else if (!mine.equals(content)) problems.push(`stale: ${out}/${path}`);
      }
      for (const path of committed.keys()) {
        if (!fresh.has(path)) problems.push(`not generated from any proto: ${out}/${path}`);
      }
    }
    if (problems.length > 0) {
      console.error(problems.join("\n"));
      console.error("the generated stubs are out of date: run `npm run generate` in client/typescript and commit");
      process.exitCode = 1;
      return;
    }
    console.log("generated stubs are fresh");
  } finally {
    rmSync(scratch, { recursive: true, force: true });
  }
}

if (process.argv.includes("--check")) check();
else generate(undefined);
