#!/usr/bin/env node
// Build a JavaScript Kiln plugin into a WebAssembly component.
//
//   kiln-js-build --world aggregate|projection|saga --entry <entry.js> --out <file.wasm> \
//     [--wit <wit dir>] [--node-modules <dir>] [--quiet]
//
// (`kiln-js-build` is this file, the `bin` of the kiln-sdk package; in this
// repository also `node sdk/js/build.mjs ...`.)
//
// --world         the world the plugin implements
// --entry         the plugin's component entry module, e.g. src/plugin.js
// --out           where to write the component (written to a temporary file
//                 beside it, then renamed)
// --wit           the WIT directory (package kiln:plugin); bindings are
//                 generated from it at build time. Default: the `wit/` of the
//                 Kiln checkout this SDK sits in (../../wit from this file).
// --node-modules  a node_modules directory holding componentize-js (this
//                 SDK's dependencies). Default: the nearest node_modules
//                 holding it, looking up from the current directory, then
//                 from this file.
// --quiet         print nothing on success
//
// The entry and the modules it imports are copied into a fresh staging
// directory (keeping their layout relative to the deepest directory that
// contains them all), and componentize-js builds from there, so imports may
// reach anywhere on disk and nothing else is visible to the build. A module
// may import relative modules ("./x.js"), packages by name ("kiln-sdk",
// "kiln-sdk/aggregate", resolved like Node does, from node_modules, through
// the package's `exports`; rewritten to relative paths in the staged copy)
// and the world's WIT interfaces; `kiln:plugin/log` is rewritten to the WIT
// package's version (`kiln:plugin/log@0.1.0`). Every WASI feature of the
// JavaScript engine is disabled, so the component imports nothing but the
// world's own interfaces; the build checks that when jco is available.
//
// The output is not reproducible: componentize-js snapshots the engine after
// running the modules' top level, and two builds of the same sources differ
// in a few bytes (and in size). The host keys plugins by their sha256, so a
// caller that rebuilds unchanged sources should keep the old output (the
// Rust build stamps its inputs for that).
//
// Exit status: 0 on success, 1 on a build error, 2 on bad arguments.

import { createHash } from 'node:crypto';
import { existsSync, statSync } from 'node:fs';
import { copyFile, mkdir, mkdtemp, readFile, readdir, rename, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { createRequire } from 'node:module';
import { basename, dirname, join, relative, resolve, sep } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const WORLDS = ['aggregate', 'projection', 'saga'];
const WASI_FEATURES = ['stdio', 'random', 'clocks', 'http', 'fetch-event'];

class BuildError extends Error {}

class UsageError extends Error {}

function usage() {
  return (
    'usage: kiln-js-build --world aggregate|projection|saga --entry <entry.js> --out <file.wasm> ' +
    '[--wit <wit dir>] [--node-modules <dir>] [--quiet]'
  );
}

function parseArgs(argv) {
  const options = { quiet: false };
  const names = { '--node-modules': 'nodeModules', '--wit': 'wit', '--world': 'world', '--entry': 'entry', '--out': 'out' };
  for (let i = 0; i < argv.length; i += 1) {
    let arg = argv[i];
    if (arg === '--quiet') {
      options.quiet = true;
      continue;
    }
    if (arg === '--help' || arg === '-h') {
      console.log(usage());
      process.exit(0);
    }
    let value;
    const eq = arg.indexOf('=');
    if (arg.startsWith('--') && eq > 0) {
      value = arg.slice(eq + 1);
      arg = arg.slice(0, eq);
    }
    const name = names[arg];
    if (!name) throw new UsageError(`unknown argument ${JSON.stringify(argv[i])}`);
    if (value === undefined) {
      i += 1;
      if (i >= argv.length) throw new UsageError(`${arg} needs a value`);
      value = argv[i];
    }
    options[name] = value;
  }
  options.wit ??= defaultWit();
  options.nodeModules ??= defaultNodeModules();
  for (const [flag, name] of Object.entries(names)) {
    if (!options[name]) throw new UsageError(`missing ${flag}`);
  }
  if (!WORLDS.includes(options.world)) {
    throw new UsageError(`--world must be one of ${WORLDS.join(', ')}, not ${JSON.stringify(options.world)}`);
  }
  for (const name of ['nodeModules', 'wit', 'entry', 'out']) options[name] = resolve(options[name]);
  return options;
}

/** This file's directory (its real path, also when run through a link). */
const SDK_DIR = dirname(fileURLToPath(import.meta.url));

/** The `wit/` of the Kiln checkout this SDK sits in, if there is one. */
function defaultWit() {
  const wit = resolve(SDK_DIR, '..', '..', 'wit');
  return existsSync(wit) ? wit : undefined;
}

/**
 * The nearest node_modules holding componentize-js, looking up from the
 * current directory, then from this file.
 */
function defaultNodeModules() {
  for (const start of [process.cwd(), SDK_DIR]) {
    for (let dir = resolve(start); ; dir = dirname(dir)) {
      const candidate = join(dir, 'node_modules');
      if (existsSync(join(candidate, '@bytecodealliance', 'componentize-js', 'package.json'))) return candidate;
      if (dirname(dir) === dir) break;
    }
  }
  return undefined;
}

/** The ES module entry point of package `name` in `nodeModules`. */
async function packageEntry(nodeModules, name) {
  const dir = join(nodeModules, ...name.split('/'));
  const manifestPath = join(dir, 'package.json');
  let manifest;
  try {
    manifest = JSON.parse(await readFile(manifestPath, 'utf8'));
  } catch (error) {
    throw new BuildError(
      `cannot load ${name} from ${nodeModules} (${error.code ?? error.message}); ` +
        'run `npm install` where the plugin\'s package.json depends on kiln-sdk, or pass --node-modules',
    );
  }
  const exported = manifest.exports?.['.'] ?? manifest.exports;
  const target =
    typeof exported === 'string'
      ? exported
      : (exported?.import ?? exported?.default ?? manifest.module ?? manifest.main ?? 'index.js');
  return { url: pathToFileURL(join(dir, typeof target === 'string' ? target : target.default)).href, version: manifest.version };
}

/** The WIT package's `namespace:name` and version, from `package ...;`. */
async function witPackage(witDir) {
  let files;
  try {
    files = (await readdir(witDir)).filter((file) => file.endsWith('.wit')).sort();
  } catch (error) {
    throw new BuildError(`cannot read the WIT directory ${witDir}: ${error.code ?? error.message}`);
  }
  for (const file of files) {
    const text = await readFile(join(witDir, file), 'utf8');
    const match = /^\s*package\s+([a-z][\w-]*:[a-z][\w-]*)(?:@([^\s;]+))?\s*;/m.exec(text);
    if (match) return { name: match[1], version: match[2] ?? null };
  }
  throw new BuildError(`no \`package namespace:name@version;\` declaration in ${witDir}/*.wit`);
}

/**
 * The modules reachable from `entry` through static imports: a Map from
 * absolute path to { source, rewrites }, where rewrites replace WIT
 * specifiers by their versioned form.
 */
async function collectModules(entry, lexer, pkg) {
  const modules = new Map();
  const pending = [entry];
  while (pending.length > 0) {
    const file = pending.pop();
    if (modules.has(file)) continue;
    let source;
    try {
      source = await readFile(file, 'utf8');
    } catch (error) {
      throw new BuildError(`cannot read ${file}: ${error.code ?? error.message}`);
    }
    let imports;
    try {
      [imports] = lexer.parse(source, file);
    } catch (error) {
      throw new BuildError(`cannot parse ${file} as an ES module: ${error.message}`);
    }
    const rewrites = [];
    for (const imp of imports) {
      // imp.d: -1 static import, -2 import.meta, >= 0 dynamic import().
      if (imp.d === -2) continue;
      if (imp.d >= 0) {
        throw new BuildError(`${file}: dynamic import() is not supported in a component; use a static import`);
      }
      const specifier = imp.n;
      if (specifier === undefined) throw new BuildError(`${file}: an import specifier must be a plain string`);
      if (specifier.startsWith('./') || specifier.startsWith('../')) {
        const target = resolve(dirname(file), specifier);
        if (!existsSync(target) || !statSync(target).isFile()) {
          throw new BuildError(`${file}: cannot resolve import ${JSON.stringify(specifier)} (no file ${target})`);
        }
        pending.push(target);
        continue;
      }
      const wit = /^([a-z][\w-]*:[a-z][\w-]*)\/([a-z][\w-]*)(?:@(.+))?$/.exec(specifier);
      if (wit && wit[1] === pkg.name) {
        if (!wit[3] && pkg.version) {
          rewrites.push({ start: imp.s, end: imp.e, text: `${specifier}@${pkg.version}` });
        }
        continue;
      }
      const target = resolvePackage(file, specifier);
      pending.push(target);
      let path = relative(dirname(file), target).split(sep).join('/');
      if (!path.startsWith('.')) path = `./${path}`;
      rewrites.push({ start: imp.s, end: imp.e, text: path });
    }
    modules.set(file, { source, rewrites });
  }
  return modules;
}

/**
 * The file a package import (`kiln-sdk`, `kiln-sdk/testing`) names, resolved
 * from `file` as Node resolves it (node_modules, the package's `exports`),
 * with links followed.
 */
function resolvePackage(file, specifier) {
  let target;
  try {
    target = createRequire(file).resolve(specifier);
  } catch (error) {
    throw new BuildError(
      `${file}: cannot resolve import ${JSON.stringify(specifier)} (${error.code ?? error.message}); ` +
        'a component may import relative modules ("./x.js"), installed packages ("kiln-sdk") ' +
        'and the world\'s WIT interfaces ("kiln:plugin/log")',
    );
  }
  if (!target.endsWith('.js') && !target.endsWith('.mjs')) {
    throw new BuildError(`${file}: import ${JSON.stringify(specifier)} resolves to ${target}, not an ES module`);
  }
  return target;
}

/** The deepest directory containing every path. */
function commonDirectory(paths) {
  let common = dirname(paths[0]);
  for (const path of paths) {
    while (path !== common && !path.startsWith(common.endsWith(sep) ? common : common + sep)) {
      common = dirname(common);
    }
  }
  return common;
}

function applyRewrites(source, rewrites) {
  let out = source;
  for (const { start, end, text } of [...rewrites].sort((a, b) => b.start - a.start)) {
    out = out.slice(0, start) + text + out.slice(end);
  }
  return out;
}

/** Write `bytes` to `path` atomically: a temporary file beside it, then rename. */
async function writeAtomically(path, bytes) {
  await mkdir(dirname(path), { recursive: true });
  const temporary = join(dirname(path), `.${basename(path)}.${process.pid}.tmp`);
  try {
    await writeFile(temporary, bytes);
    await rename(temporary, path);
  } catch (error) {
    await rm(temporary, { force: true });
    throw new BuildError(`cannot write ${path}: ${error.code ?? error.message}`);
  }
}

/** The component's imports, as `import ...;` lines of its WIT; null without jco. */
async function componentImports(nodeModules, bytes) {
  let jco;
  try {
    jco = await import((await packageEntry(nodeModules, '@bytecodealliance/jco')).url);
  } catch {
    return null;
  }
  const wit = await jco.componentWit(bytes);
  return wit
    .split('\n')
    .map((line) => line.trim())
    .filter((line) => line.startsWith('import '));
}

async function build(options) {
  const started = performance.now();
  if (!existsSync(options.entry)) throw new BuildError(`no entry module ${options.entry}`);
  const componentizeJs = await packageEntry(options.nodeModules, '@bytecodealliance/componentize-js');
  const lexerPackage = await packageEntry(options.nodeModules, 'es-module-lexer');
  const { componentize } = await import(componentizeJs.url);
  const lexer = await import(lexerPackage.url);
  await lexer.init;

  const pkg = await witPackage(options.wit);
  const modules = await collectModules(options.entry, lexer, pkg);
  const root = commonDirectory([...modules.keys()]);

  const staging = await mkdtemp(join(tmpdir(), 'kiln-js-build-'));
  const previousCwd = process.cwd();
  try {
    for (const [file, { source, rewrites }] of modules) {
      const target = join(staging, relative(root, file));
      await mkdir(dirname(target), { recursive: true });
      if (rewrites.length === 0) await copyFile(file, target);
      else await writeFile(target, applyRewrites(source, rewrites));
    }
    // componentize-js maps the current directory into the engine when the
    // source lies inside it: work from the staging directory, so that the
    // build sees the staged modules only and module paths in stack traces
    // are relative to `root`.
    process.chdir(staging);
    let result;
    try {
      result = await componentize({
        sourcePath: join(staging, relative(root, options.entry)),
        witPath: options.wit,
        worldName: options.world,
        disableFeatures: WASI_FEATURES,
      });
    } catch (error) {
      throw new BuildError(`componentize-js failed:\n${error.message ?? error}`);
    }
    process.chdir(previousCwd);

    const bytes = result.component;
    const imports = await componentImports(options.nodeModules, bytes);
    if (imports) {
      const foreign = imports.filter((line) => !line.startsWith(`import ${pkg.name}/`));
      if (foreign.length > 0) {
        throw new BuildError(`the component imports more than the world's interfaces:\n  ${foreign.join('\n  ')}`);
      }
    }
    await writeAtomically(options.out, bytes);
    if (!options.quiet) {
      const seconds = ((performance.now() - started) / 1000).toFixed(1);
      const sha = createHash('sha256').update(bytes).digest('hex').slice(0, 16);
      const modulesList = [...modules.keys()].map((file) => relative(root, file)).join(', ');
      console.log(
        `built ${options.out} (${options.world}, ${bytes.length} bytes, sha256 ${sha}…) in ${seconds} s ` +
          `with componentize-js ${componentizeJs.version}\n  modules: ${modulesList}` +
          (imports ? `\n  imports: ${imports.map((line) => line.slice(7, -1)).join(', ') || 'none'}` : ''),
      );
    }
  } finally {
    process.chdir(previousCwd);
    await rm(staging, { recursive: true, force: true });
  }
}

try {
  await build(parseArgs(process.argv.slice(2)));
} catch (error) {
  if (error instanceof UsageError) {
    console.error(`build.mjs: ${error.message}\n${usage()}`);
    process.exit(2);
  }
  const where = error instanceof BuildError ? '' : ' (unexpected)';
  console.error(`build.mjs: error${where}: ${error instanceof BuildError ? error.message : (error?.stack ?? error)}`);
  process.exit(1);
}
