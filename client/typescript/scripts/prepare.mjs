#!/usr/bin/env node
// Builds dist/ wherever npm prepares this package: `npm install` in this folder, `npm
// install ./client/typescript` from another project (npm runs `prepare` in the linked
// folder), and `npm pack` (npm runs `prepare` before packing).
//
// In the last two cases this folder's own dev dependencies (typescript) may not be
// installed yet, so they are installed first from the lockfile, exactly as `npm ci`
// would, with scripts off so this script does not run again inside itself.
import { execFileSync } from "node:child_process";
import { existsSync, rmSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const packageRoot = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const tsc = join(packageRoot, "node_modules", "typescript", "bin", "tsc");
const npm = process.env.npm_execpath;

if (!existsSync(tsc)) {
  console.error("@memstore/client: installing its build tools (npm ci) to build dist/");
  const [command, args] = npm ? [process.execPath, [npm]] : ["npm", []];
  execFileSync(command, [...args, "ci", "--ignore-scripts", "--no-audit", "--no-fund"], {
    cwd: packageRoot,
    stdio: "inherit",
  });
}
rmSync(join(packageRoot, "dist"), { recursive: true, force: true });
execFileSync(process.execPath, [tsc, "-p", "tsconfig.build.json"], { cwd: packageRoot, stdio: "inherit" });
