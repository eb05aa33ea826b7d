// Validates deploy/kubernetes: every object against its schema (Kubernetes
// core kinds, KEDA and prometheus-operator CRDs, via kubernetes-models), the
// kustomization's references, and the promises the README makes about the
// manifests (grace period above the shutdown timeout, memory limit above the
// memory bound, non-root, read-only root filesystem, probes). Core kinds are
// also validated strictly (unknown fields) by kubernetes-validate in
// scripts/validate-manifests.sh; kubernetes-models does not reject unknown
// fields, so the checks below name the fields that matter.
//
// Usage: node validate.mjs <deploy/kubernetes>
import { readFileSync, readdirSync, existsSync } from "node:fs";
import { join } from "node:path";
import { parseAllDocuments, parse } from "yaml";

const dir = process.argv[2];
const failures = [];
const fail = (what) => failures.push(what);

// Where each API group's models live.
function modulePath(apiVersion, kind) {
  const [group, version] = apiVersion.includes("/") ? apiVersion.split("/") : ["", apiVersion];
  if (group === "keda.sh") return `@kubernetes-models/keda/keda.sh/${version}/${kind}`;
  if (group === "monitoring.coreos.com")
    return `@kubernetes-models/prometheus-operator/monitoring.coreos.com/${version}/${kind}`;
  return group === "" ? `kubernetes-models/${version}/${kind}` : `kubernetes-models/${group}/${version}/${kind}`;
}

async function schemaErrors(object) {
  let Model;
  try {
    Model = (await import(modulePath(object.apiVersion, object.kind)))[object.kind];
  } catch {
    return `no schema for ${object.apiVersion} ${object.kind}`;
  }
  try {
    new Model(object).validate();
    return null;
  } catch (e) {
    return e.message.split("\n").slice(0, 6).join("\n");
  }
}

function readEnvFile(path) {
  const env = {};
  for (const line of readFileSync(path, "utf8").split("\n")) {
    const m = line.match(/^([A-Z_][A-Z0-9_]*)=(.*)$/);
    if (m) env[m[1]] = m[2];
    else if (line.trim() && !line.startsWith("#")) fail(`${path}: not KEY=value: ${line}`);
  }
  return env;
}

const mib = (q) => {
  const m = String(q).match(/^(\d+)(Mi|Gi|MiB|GiB)$/);
  if (!m) throw new Error(`unexpected quantity ${q}`);
  return Number(m[1]) * (m[2].startsWith("G") ? 1024 : 1);
};

const kustomization = parse(readFileSync(join(dir, "kustomization.yaml"), "utf8"));
const objects = [];
for (const file of kustomization.resources) {
  if (!existsSync(join(dir, file))) {
    fail(`kustomization lists ${file}, which does not exist`);
    continue;
  }
  for (const doc of parseAllDocuments(readFileSync(join(dir, file), "utf8"))) {
    if (doc.errors.length) fail(`${file}: ${doc.errors[0].message}`);
    const object = doc.toJS();
    if (object) objects.push({ file, object });
  }
}
for (const file of readdirSync(dir).filter((f) => f.endsWith(".yaml") && f !== "kustomization.yaml"))
  if (!kustomization.resources.includes(file)) fail(`${file} is not in kustomization.yaml`);

const generated = new Set();
let env = {};
for (const gen of kustomization.configMapGenerator ?? []) {
  generated.add(gen.name);
  for (const f of gen.envs ?? []) env = { ...env, ...readEnvFile(join(dir, f)) };
  for (const f of gen.files ?? []) if (!existsSync(join(dir, f))) fail(`generator file ${f} missing`);
}

for (const { file, object } of objects) {
  const problem = await schemaErrors(object);
  if (problem) fail(`${file}: ${object.kind}/${object.metadata?.name}: ${problem}`);
}

const find = (kind) => objects.filter((o) => o.object.kind === kind).map((o) => o.object);
const [deployment] = find("Deployment");
const pod = deployment.spec.template.spec;
const external = new Set(["wfm-worker-secrets", "rds-ca-bundle"]);

// Pods: what the README promises of every container.
for (const spec of [pod, ...find("CronJob").map((c) => c.spec.jobTemplate.spec.template.spec)]) {
  if (!spec.securityContext?.runAsNonRoot) fail("a pod may run as root");
  for (const c of [...(spec.initContainers ?? []), ...spec.containers]) {
    if (!c.securityContext?.readOnlyRootFilesystem) fail(`${c.name}: root filesystem writable`);
    if (c.securityContext?.allowPrivilegeEscalation !== false) fail(`${c.name}: privilege escalation`);
    if (!c.resources?.limits?.memory) fail(`${c.name}: no memory limit`);
    for (const from of c.envFrom ?? []) {
      const name = from.configMapRef?.name ?? from.secretRef?.name;
      if (!generated.has(name) && !external.has(name)) fail(`${c.name}: refers to unknown ${name}`);
    }
  }
}
const worker = pod.containers.find((c) => c.name === "wfm-worker");
const shutdown = Number(env.WFM_SHUTDOWN_TIMEOUT_SECS ?? 30);
if (!(pod.terminationGracePeriodSeconds > shutdown))
  fail(`terminationGracePeriodSeconds ${pod.terminationGracePeriodSeconds} <= shutdown timeout ${shutdown}`);
const bound = mib(env.WFM_MEMORY_LIMIT ?? "1GiB") + 40;
if (mib(worker.resources.limits.memory) < bound)
  fail(`memory limit ${worker.resources.limits.memory} below WFM_MEMORY_LIMIT + 40 MiB (${bound} Mi)`);
if (worker.readinessProbe?.httpGet?.path !== "/readyz") fail("readiness probe is not /readyz");
if (worker.livenessProbe?.httpGet?.path !== "/healthz") fail("liveness probe is not /healthz");
if (!pod.initContainers?.some((c) => c.args?.[0] === "bootstrap")) fail("no bootstrap init container");

// Wiring between objects.
const labels = deployment.spec.template.metadata.labels;
const selects = (selector) => Object.entries(selector).every(([k, v]) => labels[k] === v);
const [service] = find("Service");
if (!selects(service.spec.selector)) fail("the Service does not select the worker pods");
if (!selects(find("PodDisruptionBudget")[0].spec.selector.matchLabels)) fail("the PDB selects no worker");
const [monitor] = find("ServiceMonitor");
const ports = new Set(service.spec.ports.map((p) => p.name));
for (const e of monitor.spec.endpoints) if (!ports.has(e.port)) fail(`ServiceMonitor port ${e.port} not on the Service`);
const [scaled] = find("ScaledObject");
if (scaled.spec.scaleTargetRef.name !== deployment.metadata.name) fail("ScaledObject scales something else");
const queues = new Set([env.WFM_CHECKIN_QUEUE ?? "wfm.checkins", env.WFM_VERSION_QUEUE ?? "wfm.versions"]);
for (const t of scaled.spec.triggers) {
  if (!queues.has(t.metadata.queueName)) fail(`KEDA watches ${t.metadata.queueName}, not a work queue`);
  if (!find("TriggerAuthentication").some((a) => a.metadata.name === t.authenticationRef?.name))
    fail(`trigger authentication ${t.authenticationRef?.name} missing`);
}
for (const rule of find("PrometheusRule").flatMap((r) => r.spec.groups.flatMap((g) => g.rules))) {
  if (!rule.alert || !rule.labels?.severity || !rule.annotations?.summary) fail(`rule ${rule.alert}: incomplete`);
  if (String(rule.expr).includes("\n")) fail(`rule ${rule.alert}: expr spans lines (tests read one line)`);
}

// The dashboard: JSON, one query per target, unique panel ids.
const dashboard = JSON.parse(readFileSync(join(dir, "grafana-dashboard.json"), "utf8"));
const ids = dashboard.panels.map((p) => p.id);
if (new Set(ids).size !== ids.length) fail("dashboard panel ids repeat");
for (const p of dashboard.panels)
  for (const t of p.targets) if (!t.expr?.includes("wfm_")) fail(`panel ${p.title}: target without a wfm_ query`);

// The validator itself: a broken object must fail, or nothing above means anything.
const broken = structuredClone(scaled);
broken.spec.triggers = "nope";
if (!(await schemaErrors(broken))) fail("self-check: a broken ScaledObject passed");
const brokenDeployment = structuredClone(deployment);
brokenDeployment.spec.template.spec.containers[0].ports[0].containerPort = "http";
if (!(await schemaErrors(brokenDeployment))) fail("self-check: a broken Deployment passed");

if (failures.length) {
  for (const f of failures) console.error(`manifests: ${f}`);
  process.exit(1);
}
console.log(`manifests: ${objects.length} objects valid (${[...new Set(objects.map((o) => o.object.kind))].join(", ")}), dashboard of ${dashboard.panels.length} panels`);
