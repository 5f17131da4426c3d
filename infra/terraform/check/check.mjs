// Offline checks of the Terraform code in infra/terraform (no terraform binary, no provider
// download):
//
//   1. every .tf file parses (HCL's own parser, compiled to WebAssembly: @cdktf/hcl2json);
//   2. every .tf file is formatted as hclwrite.Format formats it (what `terraform fmt` applies,
//      @cdktf/hcl-tools);
//   3. every resource and data source type exists in the provider, every argument and nested
//      block of it exists in the provider's schema, and every required one is given; module
//      calls give only the child module's variables and all its required ones; references to
//      resources, data sources, variables, locals and modules name things that are declared, and
//      resource attributes that exist. The schema is the AWS provider 6.25.0's (and archive
//      2.x's), as generated into cdktf's prebuilt bindings (@cdktf/provider-aws 21.22.1,
//      @cdktf/provider-archive 11.0.1): the interfaces in their .d.ts files name each argument's
//      Terraform name, whether it is optional, and whether it is a nested block.
//
// Not checked (terraform validate would): the types of values, expressions' evaluation,
// provider-side validation (enums, ranges). checkov and infra/tests/test_iac_parity.py check
// other things.
//
//   node check.mjs [--json-out DIR]   DIR receives one parsed JSON per module directory
import fs from "node:fs";
import path from "node:path";
import { createRequire } from "node:module";
import { parse } from "@cdktf/hcl2json";
import { format } from "@cdktf/hcl-tools";

const require = createRequire(import.meta.url);
const HERE = path.dirname(new URL(import.meta.url).pathname);
const ROOT = path.resolve(HERE, "..");
const REPO = path.resolve(ROOT, "../..");

const args = process.argv.slice(2);
const jsonOut = args[0] === "--json-out" ? args[1] : null;

const problems = [];
const problem = (where, what) => problems.push(`${path.relative(REPO, where) || "."}: ${what}`);

// ------------------------------------------------------------------------------ files

function moduleDirs(dir) {
  const out = [];
  const entries = fs.readdirSync(dir, { withFileTypes: true });
  if (entries.some((e) => e.isFile() && e.name.endsWith(".tf"))) out.push(dir);
  for (const e of entries) {
    if (e.isDirectory() && !["check", "node_modules", ".terraform"].includes(e.name)) {
      out.push(...moduleDirs(path.join(dir, e.name)));
    }
  }
  return out;
}

function mergeInto(target, source) {
  for (const [k, v] of Object.entries(source)) {
    if (Array.isArray(v)) target[k] = [...(target[k] ?? []), ...v];
    else if (v && typeof v === "object") target[k] = mergeInto(target[k] ?? {}, v);
    else target[k] = v;
  }
  return target;
}

const modules = {};
for (const dir of moduleDirs(ROOT)) {
  const merged = {};
  for (const name of fs.readdirSync(dir).filter((n) => n.endsWith(".tf")).sort()) {
    const file = path.join(dir, name);
    const text = fs.readFileSync(file, "utf8");
    let parsed;
    try {
      parsed = await parse(file, text);
    } catch (e) {
      problem(file, `does not parse: ${e.message ?? e}`);
      continue;
    }
    const formatted = await format(text);
    if (formatted !== text) {
      const a = text.split("\n");
      const b = formatted.split("\n");
      const line = a.findIndex((l, i) => l !== b[i]);
      problem(file, `not formatted (terraform fmt): first difference at line ${line + 1}: ${JSON.stringify(a[line])} should be ${JSON.stringify(b[line])}`);
    }
    mergeInto(merged, parsed);
  }
  modules[dir] = merged;
}

// ------------------------------------------------------------------------------ the schema

const PROVIDERS = { aws: "@cdktf/provider-aws", archive: "@cdktf/provider-archive" };
const interfaceCache = new Map();

function bindingDir(kind, type) {
  const [provider, ...rest] = type.split("_");
  const pkg = PROVIDERS[provider];
  if (!pkg) return null;
  const base = path.dirname(require.resolve(`${pkg}/package.json`));
  const stem = rest.join("-");
  const dir = kind === "data" ? `data-${provider}-${stem}` : stem;
  return path.join(base, "lib", dir);
}

function loadBinding(kind, type) {
  const key = `${kind} ${type}`;
  if (interfaceCache.has(key)) return interfaceCache.get(key);
  let result = null;
  const dir = bindingDir(kind, type);
  if (dir && fs.existsSync(path.join(dir, "index.d.ts"))) {
    const js = fs.readFileSync(path.join(dir, "index.js"), "utf8");
    // The binding must really be this Terraform type (the directory name is derived).
    const m = js.match(/^(\w+)\.tfResourceType = "([^"]+)";$/m);
    if (m && m[2] === type) {
      const dts = fs.readFileSync(path.join(dir, "index.d.ts"), "utf8");
      result = { className: m[1], interfaces: parseInterfaces(dts), getters: classGetters(dts, m[1]) };
    }
  }
  interfaceCache.set(key, result);
  return result;
}

// interface name -> Map(terraform name -> { optional, block: interface name | null })
function parseInterfaces(dts) {
  const interfaces = {};
  const re = /^export interface (\w+)(?: extends [\w.]+)? \{\n([\s\S]*?)^\}/gm;
  for (const [, name, body] of dts.matchAll(re)) {
    const props = new Map();
    for (const chunk of body.split("/**").slice(1)) {
      const link = chunk.match(/\{@link \S+#(\w+) \S+\}/);
      const prop = chunk.match(/readonly (\w+)(\?)?:\s*([\s\S]*?);\s*$/);
      if (!link || !prop) continue;
      const typeRef = prop[3].match(/\b([A-Z]\w+)\b/);
      props.set(link[1], { optional: prop[2] === "?", typeRef: typeRef ? typeRef[1] : null });
    }
    interfaces[name] = props;
  }
  for (const props of Object.values(interfaces)) {
    for (const p of props.values()) p.block = p.typeRef && interfaces[p.typeRef] ? p.typeRef : null;
  }
  return interfaces;
}

function classGetters(dts, className) {
  const start = dts.indexOf(`export declare class ${className} extends`);
  if (start < 0) return new Set();
  const body = dts.slice(start);
  const camel = new Set([...body.matchAll(/^\s+get (\w+)\(\)/gm)].map((m) => m[1]));
  return camel;
}

const snakeToCamel = (s) => s.replace(/_([a-z0-9])/g, (_, c) => c.toUpperCase());

const META = {
  resource: new Set(["count", "for_each", "provider", "depends_on", "lifecycle", "connection", "provisioner"]),
  data: new Set(["count", "for_each", "provider", "depends_on", "lifecycle"]),
};

const isBlockList = (v) => Array.isArray(v) && v.length > 0 && v.every((x) => x && typeof x === "object" && !Array.isArray(x));

function checkBody(file, where, body, props, interfaces, meta) {
  for (const [key, value] of Object.entries(body)) {
    if (meta && meta.has(key)) continue;
    if (key === "dynamic") {
      for (const [blockName, dyns] of Object.entries(value)) {
        const p = props.get(blockName);
        if (!p || !p.block) {
          problem(file, `${where}: dynamic "${blockName}": no such nested block in the provider schema`);
          continue;
        }
        for (const dyn of dyns) {
          for (const k of Object.keys(dyn)) {
            if (!["for_each", "iterator", "labels", "content"].includes(k)) problem(file, `${where}: dynamic "${blockName}": unknown argument ${k}`);
          }
          for (const content of dyn.content ?? []) {
            checkBody(file, `${where}.${blockName}`, content, interfaces[p.block], interfaces, null);
          }
        }
      }
      continue;
    }
    const p = props.get(key);
    if (!p) {
      problem(file, `${where}: unsupported argument or block "${key}" (not in the provider schema)`);
      continue;
    }
    if (p.block) {
      if (!isBlockList(value)) {
        problem(file, `${where}: "${key}" is a block in the provider schema: write ${key} { ... }, not ${key} = ...`);
        continue;
      }
      for (const inner of value) checkBody(file, `${where}.${key}`, inner, interfaces[p.block], interfaces, null);
    } else if (isBlockList(value) && !p.typeRef) {
      problem(file, `${where}: "${key}" is an argument in the provider schema: write ${key} = ..., not a block`);
    }
  }
  const dynamicNames = new Set(Object.keys(body.dynamic ?? {}));
  for (const [name, p] of props) {
    if (!p.optional && !(name in body) && !dynamicNames.has(name)) problem(file, `${where}: required argument "${name}" is missing`);
  }
}

// ------------------------------------------------------------------------------ checks

const FILE_OF = (dir) => dir; // problems name the module directory

function checkModule(dir, mod) {
  const declared = {
    resource: new Set(),
    data: new Set(),
    var: new Set(Object.keys(mod.variable ?? {})),
    local: new Set((mod.locals ?? []).flatMap((l) => Object.keys(l))),
    module: new Set(Object.keys(mod.module ?? {})),
  };
  for (const kind of ["resource", "data"]) {
    for (const [type, byName] of Object.entries(mod[kind] ?? {})) {
      const binding = loadBinding(kind, type);
      for (const [name, bodies] of Object.entries(byName)) {
        declared[kind].add(`${type}.${name}`);
        const where = `${kind === "data" ? "data." : ""}${type}.${name}`;
        if (!binding) {
          problem(FILE_OF(dir), `${where}: no ${kind === "data" ? "data source" : "resource type"} ${type} in the provider schema`);
          continue;
        }
        const config = binding.interfaces[`${binding.className}Config`];
        for (const body of bodies) checkBody(dir, where, body, config, binding.interfaces, META[kind]);
      }
    }
  }
  for (const [name, calls] of Object.entries(mod.module ?? {})) {
    for (const call of calls) {
      const childDir = path.resolve(dir, call.source ?? "");
      const child = modules[childDir];
      if (!child) {
        problem(dir, `module.${name}: source ${call.source} is not a module of this repository`);
        continue;
      }
      const vars = child.variable ?? {};
      for (const k of Object.keys(call)) {
        if (["source", "version", "providers", "count", "for_each", "depends_on"].includes(k)) continue;
        if (!(k in vars)) problem(dir, `module.${name}: the module has no variable "${k}"`);
      }
      for (const [v, [spec]] of Object.entries(vars)) {
        if (!("default" in spec) && !(v in call)) problem(dir, `module.${name}: required variable "${v}" is not given`);
      }
    }
  }
  // References in every expression of the module.
  const text = JSON.stringify(mod);
  const exprs = [...text.matchAll(/\$\{((?:[^{}]|\{[^{}]*\})*)\}/g)].map((m) => m[1]);
  const iterators = new Set(["each", "count", "path", "self", "terraform"]);
  for (const expr of exprs) {
    const clean = expr.replace(/\\"(?:[^"\\]|\\.)*?\\"/g, '""');
    for (const m of clean.matchAll(/(?<![\w.\]])((?:data\.)?[a-z][a-z0-9_]*)\.([a-z_][a-z0-9_-]*)(?:\[[^\]]*\])?(?:\.([a-z_][a-z0-9_]*))?/g)) {
      const [, head, name, attr] = m;
      if (head === "var") {
        if (!declared.var.has(name)) problem(dir, `reference to undeclared variable var.${name}`);
      } else if (head === "local") {
        if (!declared.local.has(name)) problem(dir, `reference to undeclared local.${name}`);
      } else if (head === "module") {
        if (!declared.module.has(name)) problem(dir, `reference to undeclared module.${name}`);
      } else if (head.startsWith("data.")) {
        const type = head.slice(5);
        if (!declared.data.has(`${type}.${name}`)) problem(dir, `reference to undeclared data.${type}.${name}`);
        else if (attr && !loadBinding("data", type)?.getters.has(snakeToCamel(attr))) problem(dir, `data.${type}.${name}.${attr}: no such attribute`);
      } else if (/^(aws|archive)_/.test(head)) {
        if (!declared.resource.has(`${head}.${name}`)) problem(dir, `reference to undeclared resource ${head}.${name}`);
        else if (attr && !loadBinding("resource", head)?.getters.has(snakeToCamel(attr))) problem(dir, `${head}.${name}.${attr}: no such attribute`);
      } else if (!iterators.has(head)) {
        // a for-expression's or dynamic block's iterator (lifecycle_hook.value, arn …)
      }
    }
  }
}

for (const [dir, mod] of Object.entries(modules)) checkModule(dir, mod);

if (jsonOut) {
  fs.mkdirSync(jsonOut, { recursive: true });
  for (const [dir, mod] of Object.entries(modules)) {
    const name = path.relative(ROOT, dir) || "module";
    fs.writeFileSync(path.join(jsonOut, `${name.replaceAll("/", "-")}.json`), JSON.stringify(mod, null, 1));
  }
}

const files = Object.keys(modules).length;
if (problems.length) {
  console.error(problems.join("\n"));
  console.error(`terraform check: ${problems.length} problem(s) in ${files} module(s)`);
  process.exit(1);
}
console.error(`terraform check: ${files} module(s) parse, are formatted and match the provider schema`);
