// Validate Prometheus Operator custom resources with the schemas generated from prometheus-operator's API
// types (npm @kubernetes-models/prometheus-operator, installed by scripts/test.sh). Used by
// tests/test_kubernetes.py: reads a JSON array of manifests on stdin, prints a JSON array of error strings
// (null when valid), one per manifest.
import { ServiceMonitor } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor";
import { PodMonitor } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/PodMonitor";
import { Probe } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/Probe";
import { PrometheusRule } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/PrometheusRule";

const KINDS = { ServiceMonitor, PodMonitor, Probe, PrometheusRule };
let input = "";
for await (const chunk of process.stdin) input += chunk;
const results = JSON.parse(input).map((doc) => {
  const Model = KINDS[doc.kind];
  if (!Model) return `no schema for kind ${doc.kind}`;
  try {
    new Model(doc).validate();
    return null;
  } catch (err) {
    return String(err.message || err);
  }
});
console.log(JSON.stringify(results));
