// Veritrace review: verify-now progress and the in-browser RFC 9162 inclusion proof check.
// No dependencies and no CDN: SHA-256 comes from the browser's own Web Crypto.
"use strict";

const csrf = document.body.dataset.csrf || "";

function hexToBytes(hex) {
  const out = new Uint8Array(hex.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(hex.substr(i * 2, 2), 16);
  return out;
}

function bytesToHex(bytes) {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

async function sha256(parts) {
  let length = 0;
  for (const p of parts) length += p.length;
  const all = new Uint8Array(length);
  let at = 0;
  for (const p of parts) { all.set(p, at); at += p.length; }
  return new Uint8Array(await crypto.subtle.digest("SHA-256", all));
}

const LEAF = new Uint8Array([0]);
const NODE = new Uint8Array([1]);

// RFC 9162 section 2.1.3.2: the root an inclusion proof implies for a leaf hash.
async function rootFromInclusionProof(index, size, leaf, path) {
  if (!(index >= 0 && index < size)) throw new Error(`index ${index} is beyond size ${size}`);
  let fn = index, sn = size - 1, r = leaf;
  for (const p of path) {
    if (sn === 0) throw new Error("proof is longer than the tree needs");
    if ((fn & 1) === 1 || fn === sn) {
      r = await sha256([NODE, p, r]);
      while ((fn & 1) === 0 && fn !== 0) { fn = Math.floor(fn / 2); sn = Math.floor(sn / 2); }
    } else {
      r = await sha256([NODE, r, p]);
    }
    fn = Math.floor(fn / 2); sn = Math.floor(sn / 2);
  }
  if (sn !== 0) throw new Error("proof is shorter than the tree needs");
  return r;
}

async function browserVerdict(data) {
  const entry = Uint8Array.from(atob(data.entry_b64), (c) => c.charCodeAt(0));
  const leaf = await sha256([LEAF, entry]);
  if (bytesToHex(leaf) !== data.stored_leaf_hash) return ["failed", "entry bytes do not hash to the stored leaf"];
  if (!data.proof) return ["not-yet-checkpointed", "no signed checkpoint covers this entry yet"];
  const root = await rootFromInclusionProof(
    data.proof.index, data.proof.size, leaf, data.proof.path.map(hexToBytes));
  if (bytesToHex(root) !== data.checkpoint.root_hash) {
    return ["failed", `computed root ${bytesToHex(root)} is not the checkpoint root`];
  }
  return ["verified", `leaf → ${data.proof.path.length} path hashes → root ${bytesToHex(root).slice(0, 16)}… = checkpoint of size ${data.checkpoint.size}`];
}

function line(parent, id, label, verdict, detail) {
  const p = document.createElement("p");
  p.id = id;
  p.className = "verdict verdict-" + verdict;
  const strong = document.createElement("strong");
  strong.textContent = `${label}: ${verdict}`;
  p.append(strong, document.createTextNode(detail ? ` – ${detail}` : ""));
  parent.append(p);
}

async function checkProof(index) {
  const out = document.getElementById("proof-result");
  out.textContent = "Checking…";
  const response = await fetch(`/review/api/ledger/entries/${encodeURIComponent(index)}`, { credentials: "same-origin" });
  out.textContent = "";
  if (!response.ok) { line(out, "proof-error", "Entry", "failed", `HTTP ${response.status}`); return; }
  const data = await response.json();
  const summary = document.createElement("p");
  summary.textContent = `Entry ${data.index}: ${data.kind} by ${data.actor} at ${data.recorded_at}`;
  out.append(summary);
  let verdict, detail;
  try { [verdict, detail] = await browserVerdict(data); } catch (e) { verdict = "failed"; detail = e.message; }
  line(out, "browser-verdict", "Checked in this browser", verdict, detail);
  line(out, "server-verdict", "Checked on the server", data.server_verdict, data.server_problem || "inclusion proof and checkpoint signature hold");
}

function initLedger() {
  const form = document.getElementById("proof-form");
  if (form) {
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      checkProof(document.getElementById("entry-index").value);
    });
    const wanted = new URLSearchParams(location.search).get("entry");
    if (wanted !== null && /^\d+$/.test(wanted)) {
      document.getElementById("entry-index").value = wanted;
      checkProof(wanted);
    }
  }
  const button = document.getElementById("verify-now");
  if (!button) return;
  button.addEventListener("click", async () => {
    const bar = document.getElementById("verify-progress");
    const status = document.getElementById("verify-status");
    button.disabled = true;
    bar.removeAttribute("value"); // indeterminate while the server works
    status.textContent = "Starting…";
    const started = await fetch("/review/api/ledger/verify", {
      method: "POST", credentials: "same-origin", headers: { "X-CSRF-Token": csrf },
    });
    if (!started.ok) { status.textContent = `Could not start: HTTP ${started.status}`; button.disabled = false; return; }
    let job = await started.json();
    while (job.stage === "running") {
      const total = Math.max(job.entries_at_start, 1);
      const done = Math.min(job.entries_checked || 0, total);
      if (done > 0) { bar.value = done / total; }
      status.textContent = `Verifying: ${done} of ${job.entries_at_start} entries re-hashed (${Math.round((100 * done) / total)} %), ${Math.round(Date.now() / 1000 - job.started_at)} s`;
      await new Promise((resolve) => setTimeout(resolve, 250));
      job = await (await fetch(`/review/api/ledger/verify/${job.id}`, { credentials: "same-origin" })).json();
    }
    bar.value = 1;
    button.disabled = false;
    if (job.stage === "done" && job.ok) {
      status.textContent = `Ledger verified: ${job.size} entries, ${job.checkpoints_checked} checkpoint(s) checked (trusted size ${job.trusted_size}, from ${job.trusted_source}) in ${job.seconds.toFixed(2)} s. Recorded as entry ${job.ledger_entry}.`;
      status.className = "verdict verdict-verified";
    } else {
      status.textContent = `Verification FAILED: ${job.problem || "unknown problem"}` +
        (job.first_bad_index !== null && job.first_bad_index !== undefined ? ` (first bad entry ${job.first_bad_index})` : "");
      status.className = "verdict verdict-failed";
    }
  });
}

document.addEventListener("DOMContentLoaded", initLedger);
