// Veritrace draft viewer. The session handle comes once in a <meta> of the page the launch callback
// returns; it is kept in sessionStorage (partitioned per EHR tab, works inside a third-party iframe)
// and sent as the X-Viewer-Session header. No cookies, no tokens in URLs.
(function () {
  "use strict";
  const base = document.body.dataset.base;
  const KEY = "veritrace-viewer-session";
  // Browsers that block storage in third-party frames throw here: the handle then lives in this page
  // only, and a reload asks the clinician to open the draft again from the EHR.
  function stored() { try { return sessionStorage.getItem(KEY); } catch (e) { return null; } }
  function store(value) { try { sessionStorage.setItem(KEY, value); return true; } catch (e) { return false; } }
  const meta = document.querySelector('meta[name="viewer-session"]');
  let handle = stored();
  if (meta) {
    handle = meta.content;
    meta.remove();
    if (store(handle)) history.replaceState(null, "", base + "/app");
  }

  function api(path, options) {
    const opts = Object.assign({}, options || {});
    opts.headers = Object.assign({}, opts.headers || {}, { "X-Viewer-Session": handle || "" });
    return fetch(base + path, opts);
  }

  async function imageInto(img, url) {
    const response = await api(url);
    if (!response.ok) { img.alt = "Image unavailable (" + response.status + ")"; return; }
    const old = img.dataset.blob;
    img.src = img.dataset.blob = URL.createObjectURL(await response.blob());
    if (old) URL.revokeObjectURL(old);
  }

  function row(list, term, value) {
    if (value === null || value === undefined || value === "") return;
    const dt = document.createElement("dt"); dt.textContent = term;
    const dd = document.createElement("dd"); dd.textContent = String(value);
    list.append(dt, dd);
  }

  async function showEvidence(citation) {
    const dialog = document.getElementById("evidence-dialog");
    const list = document.getElementById("evidence-body");
    list.replaceChildren();
    row(list, "Loading", "reading the cited resource from the EHR…");
    dialog.showModal();
    const response = await api("/api/evidence/" + encodeURIComponent(citation));
    const body = await response.json();
    list.replaceChildren();
    if (!response.ok) { row(list, "Not shown", body.error + ": " + body.detail); return; }
    row(list, "Resource", body.reference);
    row(list, "As cited", body.cited_display);
    row(list, "In the record", body.display);
    row(list, "Date", body.date);
    row(list, "Value", body.value);
    row(list, "Status", body.status);
    row(list, "Version cited", body.cited_version);
    if (body.changed_since_cited) row(list, "Changed since", "the record now holds version " + body.current_version);
  }

  let current = null;
  function showImage(instance, frame, preset) {
    current = { instance: instance, frame: frame };
    const dialog = document.getElementById("image-dialog");
    for (const b of dialog.querySelectorAll("[data-preset]")) b.setAttribute("aria-pressed", String(b.dataset.preset === preset));
    if (!dialog.open) dialog.showModal();
    imageInto(document.getElementById("image-large"),
      "/api/images/" + instance + "?frame=" + frame + "&size=large&preset=" + encodeURIComponent(preset));
  }

  async function act(payload) {
    const status = document.getElementById("action-status");
    status.textContent = "Recording…";
    const response = await api("/api/feedback", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(payload),
    });
    const body = await response.json();
    if (response.ok) {
      status.textContent = body.message;
      for (const el of document.querySelectorAll("#actions button, #actions select, #actions textarea")) el.disabled = true;
    } else {
      status.textContent = "Not recorded: " + body.error + ". " + body.detail;
    }
  }

  function wire() {
    for (const img of document.querySelectorAll("img.thumb[data-src]")) imageInto(img, img.dataset.src.slice(base.length));
    document.addEventListener("click", function (event) {
      const cite = event.target.closest(".cite");
      if (cite) { showEvidence(cite.dataset.cite); return; }
      const image = event.target.closest(".cite-image");
      if (image) { showImage(image.dataset.instance, image.dataset.frame, "default"); return; }
      const preset = event.target.closest("[data-preset]");
      if (preset && current) showImage(current.instance, current.frame, preset.dataset.preset);
    });
    const accept = document.getElementById("accept-form");
    if (accept) accept.addEventListener("submit", function (e) { e.preventDefault(); act({ outcome: "accepted" }); });
    const override = document.getElementById("override-form");
    if (override) override.addEventListener("submit", function (e) {
      e.preventDefault();
      const comment = document.getElementById("override-comment").value.trim();
      act({ outcome: "overridden", reason: document.getElementById("override-reason").value, comment: comment || null });
    });
  }

  async function start() {
    const main = document.getElementById("main");
    if (main.dataset.empty === "true") {
      if (!handle) { main.innerHTML = "<p role=\"alert\">No viewer session. Open the draft again from the EHR.</p>"; return; }
      const response = await api("/api/page");
      if (!response.ok) { main.innerHTML = "<p role=\"alert\">The viewer session has ended. Open the draft again from the EHR.</p>"; return; }
      main.innerHTML = await response.text();
      main.dataset.empty = "false";
    }
    if (main.classList.contains("error")) return;
    wire();
  }
  start();
})();
