// ringvault ui: the page's code. No libraries, nothing loaded from
// elsewhere. Data from the repository goes into the page only as text
// (textContent, attributes), never as HTML.
"use strict";

(() => {
  const token = new URLSearchParams(location.hash.slice(1)).get("token") || "";
  const $ = (id) => document.getElementById(id);
  // Largest file shown as text (a preview, or compared side by side), bytes.
  const TEXT_LIMIT = 1 << 20;

  const state = {
    snapshots: [], // oldest first, as the API lists them
    snapshot: null, // the picked one (an entry of `snapshots`)
    dir: "", // the open folder ("" = the snapshot's root)
    file: null, // the picked file's entry, if any
    versions: [], // versions of the picked file
  };

  // ---- helpers -------------------------------------------------------

  async function api(call, params, init) {
    const query = new URLSearchParams(params || {}).toString();
    const options = Object.assign({}, init || {});
    options.headers = Object.assign({ Authorization: "Bearer " + token }, options.headers || {});
    const res = await fetch("/api/" + call + (query ? "?" + query : ""), options);
    const type = res.headers.get("content-type") || "";
    const body = type.startsWith("application/json") ? await res.json() : await res.text();
    if (!res.ok) {
      throw new Error((body && body.error) || res.status + " " + res.statusText);
    }
    return body;
  }

  function fileUrl(snapshot, path) {
    return "/api/file?" + new URLSearchParams({ snapshot, path, token }).toString();
  }

  // Makes an element: attrs are attributes ("data-x" included), children
  // strings (as text) or nodes.
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      node.setAttribute(k, v === true ? "" : String(v));
    }
    for (const c of children) {
      if (c === null || c === undefined) continue;
      node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return node;
  }

  function fmtTime(ns) {
    if (!ns) return "";
    const d = new Date(ns / 1e6);
    const pad = (n) => String(n).padStart(2, "0");
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ` +
      `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  }

  function fmtSize(n) {
    if (n < 1024) return n + " B";
    const units = ["KiB", "MiB", "GiB", "TiB"];
    let v = n;
    let u = -1;
    while (v >= 1024 && u < units.length - 1) {
      v /= 1024;
      u += 1;
    }
    return v.toFixed(v < 10 ? 1 : 0) + " " + units[u];
  }

  // "1 file", "2 files".
  function count(n, one, many) {
    return `${n} ${n === 1 ? one : many || one + "s"}`;
  }

  function say(message, isError) {
    const s = $("status");
    s.textContent = message || "";
    s.classList.toggle("error", !!isError);
  }

  // Runs an action, showing its error (if any) in the status line.
  function guarded(action) {
    return async (...args) => {
      try {
        await action(...args);
      } catch (e) {
        say(e.message || String(e), true);
      }
    };
  }

  function looksLikeText(text) {
    return !text.slice(0, 8192).includes("\u0000");
  }

  // ---- timeline ------------------------------------------------------

  async function loadSnapshots() {
    say("loading snapshots…");
    state.snapshots = await api("snapshots");
    const list = $("timeline");
    list.replaceChildren();
    let day = "";
    for (const s of state.snapshots.slice().reverse()) {
      const when = fmtTime(s.time_ns);
      if (when.slice(0, 10) !== day) {
        day = when.slice(0, 10);
        list.append(el("li", { class: "day" }, day));
      }
      const button = el("button", { type: "button", class: "snap", "data-snapshot": s.id, title: s.id },
        el("span", { class: "time" }, when.slice(11)),
        el("span", { class: "host" }, s.host),
        el("span", { class: "id" }, s.short),
        el("span", { class: "stats" }, `${count(s.files, "file")}, ${fmtSize(s.bytes)}`),
        s.tags.length ? el("span", { class: "tags" }, s.tags.join(", ")) : null);
      button.addEventListener("click", guarded(() => pickSnapshot(s.id)));
      list.append(el("li", {}, button));
    }
    fillDiffChoices();
    say(state.snapshots.length ? count(state.snapshots.length, "snapshot") : "no snapshots yet");
  }

  async function pickSnapshot(id) {
    state.snapshot = state.snapshots.find((s) => s.id === id) || null;
    for (const b of document.querySelectorAll("#timeline .snap")) {
      b.setAttribute("aria-current", b.dataset.snapshot === id ? "true" : "false");
    }
    await openDir("");
  }

  // ---- file browser --------------------------------------------------

  async function openDir(path) {
    if (!state.snapshot) return;
    say("reading " + (path || "the snapshot") + "…");
    const listing = await api("tree", { snapshot: state.snapshot.id, path });
    state.dir = listing.path;
    state.file = null;
    $("file-panel").hidden = true;
    $("versions").hidden = true;
    renderCrumbs(listing.path);
    const body = $("listing").tBodies[0];
    body.replaceChildren();
    const sorted = listing.entries.slice().sort((a, b) =>
      (a.kind === "dir" ? 0 : 1) - (b.kind === "dir" ? 0 : 1) || (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    for (const e of sorted) {
      const label = e.kind === "dir" ? e.name + "/" : e.kind === "symlink" ? `${e.name} → ${e.target}` : e.name;
      const button = el("button", { type: "button", class: "entry " + e.kind, "data-path": e.path, "data-kind": e.kind }, label);
      button.addEventListener("click", guarded(() => (e.kind === "dir" ? openDir(e.path) : showFile(e))));
      body.append(el("tr", { "data-path": e.path, "data-kind": e.kind },
        el("td", {}, button),
        el("td", { class: "num" }, e.kind === "dir" ? "" : fmtSize(e.size)),
        el("td", { class: "time" }, fmtTime(e.mtime_ns)),
        el("td", { class: "digest" }, e.digest)));
    }
    $("listing").hidden = false;
    $("browser-hint").hidden = listing.entries.length !== 0;
    $("browser-hint").textContent = "This folder is empty.";
    setRestoreSelection(listing.path);
    $("diff-path").value = listing.path;
    say(count(listing.entries.length, "entry", "entries"));
  }

  function renderCrumbs(path) {
    const nav = $("crumbs");
    nav.replaceChildren();
    const root = el("button", { type: "button", class: "crumb", "data-path": "" },
      "snapshot " + state.snapshot.short);
    root.addEventListener("click", guarded(() => openDir("")));
    nav.append(root);
    let so = "";
    for (const part of path ? path.split("/") : []) {
      so = so ? so + "/" + part : part;
      const target = so;
      const b = el("button", { type: "button", class: "crumb", "data-path": target }, part);
      b.addEventListener("click", guarded(() => openDir(target)));
      nav.append(el("span", { class: "sep" }, "/"), b);
    }
  }

  async function showFile(entry) {
    state.file = entry;
    $("versions").hidden = true;
    say(entry.path);
    $("file-name").textContent = entry.name;
    const meta = $("file-meta");
    meta.replaceChildren();
    const rows = [
      ["path", entry.path],
      ["kind", entry.kind],
      ["size", `${fmtSize(entry.size)} (${entry.size} bytes)`],
      ["modified", fmtTime(entry.mtime_ns)],
      ["mode", entry.mode.toString(8).padStart(4, "0")],
      ["digest", entry.digest],
      ["snapshot", `${state.snapshot.short} (${fmtTime(state.snapshot.time_ns)})`],
    ];
    if (entry.target) rows.push(["target", entry.target]);
    for (const [k, v] of rows) meta.append(el("dt", {}, k), el("dd", {}, v));
    const download = $("file-download");
    const isFile = entry.kind === "file";
    download.hidden = !isFile;
    if (isFile) {
      download.href = fileUrl(state.snapshot.id, entry.path);
      download.setAttribute("download", entry.name);
    }
    $("file-panel").hidden = false;
    $("file-panel").dataset.path = entry.path;
    setRestoreSelection(entry.path);
    const preview = $("file-preview");
    preview.hidden = true;
    preview.textContent = "";
    if (isFile && entry.size <= TEXT_LIMIT) {
      const text = await api("file", { snapshot: state.snapshot.id, path: entry.path });
      if (state.file === entry && looksLikeText(text)) {
        preview.textContent = text;
        preview.hidden = false;
      }
    }
  }

  // ---- versions ------------------------------------------------------

  async function showVersions() {
    const entry = state.file;
    if (!entry) return;
    say("finding the versions of " + entry.path + "…");
    const versions = await api("versions", { path: entry.path });
    state.versions = versions;
    $("versions-path").textContent = entry.path;
    $("compare").hidden = true;
    const body = $("versions-table").tBodies[0];
    body.replaceChildren();
    for (const v of versions.slice().reverse()) {
      const isFile = v.kind === "File";
      const pick = el("input", { type: "checkbox", class: "pick", "data-version-snapshot": v.snapshot, disabled: !isFile });
      pick.addEventListener("change", updateCompareButton);
      const link = isFile
        ? el("a", { class: "download", href: fileUrl(v.snapshot, entry.path), download: entry.name,
          "data-version-snapshot": v.snapshot }, "Download")
        : "";
      body.append(el("tr", { "data-version-snapshot": v.snapshot, "data-change": v.change,
        class: v.snapshot === state.snapshot.id ? "current" : null },
      el("td", {}, pick),
      el("td", { class: "time", title: v.snapshot }, fmtTime(v.time_ns)),
      el("td", {}, v.host),
      el("td", { class: "change " + v.change }, v.change),
      el("td", { class: "num" }, v.snapshots),
      el("td", { class: "num" }, v.change === "removed" ? "" : fmtSize(v.size)),
      el("td", { class: "time" }, fmtTime(v.mtime_ns)),
      el("td", { class: "digest" }, v.digest),
      el("td", {}, link)));
    }
    updateCompareButton();
    $("versions").hidden = false;
    $("versions").scrollIntoView({ block: "nearest" });
    say(`${count(versions.length, "version")} of ${entry.path}`);
  }

  function pickedVersions() {
    return [...document.querySelectorAll("#versions-table .pick:checked")].map((c) =>
      state.versions.find((v) => v.snapshot === c.dataset.versionSnapshot));
  }

  function updateCompareButton() {
    $("compare-versions").disabled = pickedVersions().length !== 2;
  }

  async function compareVersions() {
    const picked = pickedVersions().sort((a, b) => a.time_ns - b.time_ns);
    if (picked.length !== 2 || !state.file) return;
    const path = state.file.path;
    const texts = [];
    for (const v of picked) {
      if (v.size > TEXT_LIMIT) {
        texts.push(null);
      } else {
        texts.push(await api("file", { snapshot: v.snapshot, path }));
      }
    }
    const sides = [["compare-left", picked[0], texts[0], texts[1]], ["compare-right", picked[1], texts[1], texts[0]]];
    for (const [id, v, text, other] of sides) {
      $(id + "-title").textContent = `${fmtTime(v.time_ns)} · ${fmtSize(v.size)} · ${v.digest}`;
      const pre = $(id);
      pre.replaceChildren();
      if (text === null || !looksLikeText(text)) {
        pre.append(text === null ? "(too large to show here: download it)" : "(binary content: download it)");
        continue;
      }
      const theirs = new Set(other === null ? [] : other.split("\n"));
      for (const line of text.split("\n")) {
        pre.append(el("span", { class: theirs.has(line) ? "same" : "changed" }, line + "\n"));
      }
    }
    $("compare").hidden = false;
  }

  // ---- restore -------------------------------------------------------

  function setRestoreSelection(path) {
    $("restore-path").textContent = path || "the whole snapshot";
    $("restore-path").dataset.path = path;
    $("restore-snapshot").textContent = state.snapshot ? state.snapshot.short : "-";
    $("restore-run").disabled = !state.snapshot;
  }

  // What each action says, done and in a dry run.
  const ACTIONS = {
    replaced: ["replaced by the snapshot's version", "would be replaced by the snapshot's version"],
    skipped: ["kept: already there, not replaced (it may differ from the snapshot)",
      "would be kept: already there (it may differ from the snapshot)"],
    new: ["restored (was missing)", "would be restored (missing)"],
    unchanged: ["already as in the snapshot", "already as in the snapshot"],
  };

  function syncRestoreButton() {
    $("restore-run").textContent = $("restore-dry-run").checked ? "Dry run" : "Restore";
  }

  async function runRestore(event) {
    event.preventDefault();
    if (!state.snapshot) return;
    const dryRun = $("restore-dry-run").checked;
    const request = {
      snapshot: state.snapshot.id,
      path: $("restore-path").dataset.path || "",
      target: $("restore-target").value.trim(),
      overwrite: $("restore-overwrite").value,
      dry_run: dryRun,
    };
    const out = $("restore-result");
    const summary = $("restore-summary");
    const problems = $("restore-problems");
    const table = $("restore-actions");
    out.hidden = false;
    delete out.dataset.done;
    delete out.dataset.dryRun;
    summary.classList.remove("error");
    summary.textContent = dryRun ? "looking at what a restore would do…" : "restoring…";
    problems.replaceChildren();
    table.hidden = true;
    table.tBodies[0].replaceChildren();
    $("restore-left-off").hidden = true;
    $("restore-run").disabled = true;
    try {
      const r = await api("restore", {}, {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify(request),
      });
      showRestore(r, request.path);
      out.dataset.done = r.errors.length ? "partial" : "ok";
    } catch (e) {
      summary.textContent = e.message || String(e);
      summary.classList.add("error");
      out.dataset.done = "error";
    } finally {
      out.dataset.dryRun = String(dryRun);
      $("restore-run").disabled = false;
    }
  }

  // The overwrite policies, as the page names them.
  const POLICIES = { never: "keep them", "if-changed": "replace those that differ", always: "replace them all" };

  function showRestore(r, path) {
    const dry = r.dry_run ? 1 : 0;
    const files = r.actions.filter((a) => a.kind !== "dir");
    const n = (action) => files.filter((a) => a.action === action).length;
    const what = path || "the snapshot";
    let text = (dry ? `Dry run, nothing written: restoring ${what} into ${r.target}` : `Restored ${what} into ${r.target}`) +
      ` (files already there: ${POLICIES[r.overwrite] || r.overwrite}). ` +
      `${dry ? "It would write" : "Wrote"} ${count(r.files + r.symlinks, "file")} (${fmtSize(r.bytes)}: ` +
      `${n("new")} new, ${n("replaced")} replaced), found ${r.unchanged} already as in the snapshot, ` +
      `${dry ? "would keep" : "kept"} ${r.skipped} as ${dry ? "they are" : "they were"}, ` +
      `${count(r.dirs, "folder")}.`;
    if (r.skipped) {
      text += ` ${count(r.skipped, "file")} already there ${dry ? "would be" : "were"} kept, not replaced, ` +
        "though they may differ from the snapshot: to replace them choose another policy " +
        "(a dry run first shows what it would replace).";
    }
    $("restore-summary").textContent = text;
    const problems = $("restore-problems");
    for (const e of r.errors) problems.append(el("li", {}, `not restored: ${e.path}: ${e.error}`));
    for (const b of r.bad_copies) problems.append(el("li", {}, `bad copy read around: ${b}`));
    const body = $("restore-actions").tBodies[0];
    for (const a of r.actions) {
      const says = (ACTIONS[a.action] || [a.action, a.action])[dry];
      body.append(el("tr", { "data-path": a.path, "data-action": a.action, "data-kind": a.kind },
        el("td", { class: "action " + a.action }, says),
        el("td", {}, a.path),
        el("td", {}, a.kind),
        el("td", { class: "num" }, a.kind === "file" ? fmtSize(a.size) : "")));
    }
    $("restore-actions").hidden = r.actions.length === 0;
    const leftOff = $("restore-left-off");
    leftOff.hidden = !r.actions_left_off;
    leftOff.textContent = `…and ${count(r.actions_left_off, "more entry", "more entries")}, not listed.`;
  }

  // ---- diff ----------------------------------------------------------

  function fillDiffChoices() {
    const [from, to] = [$("diff-from"), $("diff-to")];
    from.replaceChildren();
    to.replaceChildren();
    for (const s of state.snapshots) {
      const label = `${fmtTime(s.time_ns)} ${s.host} ${s.short}`;
      from.append(el("option", { value: s.id }, label));
      to.append(el("option", { value: s.id }, label));
    }
    const n = state.snapshots.length;
    if (n) {
      from.value = state.snapshots[Math.max(0, n - 2)].id;
      to.value = state.snapshots[n - 1].id;
    }
  }

  async function runDiff(event) {
    event.preventDefault();
    const from = $("diff-from").value;
    const to = $("diff-to").value;
    if (!from || !to) return;
    const path = $("diff-path").value.trim();
    const report = await api("diff", { from, to, path });
    const body = $("diff-table").tBodies[0];
    body.replaceChildren();
    for (const c of report.changes) {
      body.append(el("tr", { "data-path": c.path, "data-change": c.change },
        el("td", { class: "change " + c.change }, c.change),
        el("td", {}, c.path),
        el("td", {}, c.kind.toLowerCase()),
        el("td", { class: "num" }, c.change === "added" ? "" : fmtSize(c.size_before)),
        el("td", { class: "num" }, c.change === "removed" ? "" : fmtSize(c.size_after))));
    }
    $("diff-table").hidden = report.changes.length === 0;
    $("diff-summary").textContent = (report.changes.length ? count(report.changes.length, "change") : "no changes") +
      ` (${count(report.trees_read, "tree")} read, ${report.trees_fetched} from the cluster)`;
    $("diff-summary").dataset.count = report.changes.length;
  }

  // ---- start ---------------------------------------------------------

  $("show-versions").addEventListener("click", guarded(showVersions));
  $("compare-versions").addEventListener("click", guarded(compareVersions));
  $("restore-form").addEventListener("submit", guarded(runRestore));
  $("restore-dry-run").addEventListener("change", syncRestoreButton);
  $("diff-form").addEventListener("submit", guarded(runDiff));
  if (!token) {
    say("No access token in this address: open the address `ringvault ui` printed.", true);
    return;
  }
  guarded(loadSnapshots)().then(() => document.body.setAttribute("data-ready", "true"));
})();
