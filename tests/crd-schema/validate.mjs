// Validates prometheus-operator objects (JSON array on stdin) against the CRD schemas that
// @kubernetes-models/prometheus-operator generates from the operator's CRDs.
import { readFileSync } from "node:fs";
const docs = JSON.parse(readFileSync(0, "utf8"));
let bad = 0;
for (const d of docs) {
  const [group, version] = d.apiVersion.split("/");
  const mod = await import(`@kubernetes-models/prometheus-operator/${group}/${version}`);
  const Cls = mod[d.kind];
  if (!Cls) { bad++; console.log(`UNKNOWN ${d.apiVersion} ${d.kind}`); continue; }
  try { new Cls(d).validate(); console.log(`valid ${d.kind}/${d.metadata.name}`); }
  catch (e) { bad++; console.log(`INVALID ${d.kind}/${d.metadata.name}: ${e.message}`); }
}
process.exit(bad ? 1 : 0);
