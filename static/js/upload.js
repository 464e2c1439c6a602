// Chunked, resumable upload of files or a folder into the library (no build step).
(function () {
  "use strict";
  const CHUNK = 4 * 1024 * 1024;
  const RETRIES = 8;
  const form = document.getElementById("upload-form");
  if (!form) return;
  const status = document.getElementById("upload-status");
  const bar = document.getElementById("upload-bar");
  const picked = document.getElementById("upload-picked");
  const zone = document.getElementById("drop-zone");
  const csrf = form.querySelector("[name=csrfmiddlewaretoken]").value;
  let files = []; // [{path, file}]

  function say(text, state) {
    status.textContent = text;
    status.dataset.state = state || "working";
  }

  function setFiles(list) {
    // A picked or dropped folder arrives as "folder/...": the folder is the asset, so its
    // files are stored relative to it.
    const tops = new Set(list.map((f) => (f.path.includes("/") ? f.path.split("/")[0] : "")));
    if (tops.size === 1 && !tops.has("")) {
      const top = [...tops][0];
      const name = document.getElementById("id_name");
      if (!name.value) name.value = top;
      list = list.map((f) => ({ path: f.path.slice(top.length + 1), file: f.file }));
    }
    // Dotfiles (.DS_Store, .git/...) are never part of an asset: the server refuses them.
    list = list.filter((f) => !f.path.split("/").some((part) => part.startsWith(".")));
    files = list;
    const total = files.reduce((n, f) => n + f.file.size, 0);
    picked.textContent = files.length ? `${files.length} file(s), ${(total / 1e6).toFixed(1)} MB` : "";
    const name = document.getElementById("id_name");
    if (!name.value && files.length) {
      const first = files[0].path.split("/");
      name.value = first.length > 1 ? first[0] : first[0].replace(/\.[^.]+$/, "");
    }
  }

  function fromInput(input) {
    return Array.from(input.files).map((file) => ({
      path: file.webkitRelativePath || file.name, file,
    }));
  }

  document.getElementById("pick-files").addEventListener("change", (e) => setFiles(fromInput(e.target)));
  document.getElementById("pick-folder").addEventListener("change", (e) => setFiles(fromInput(e.target)));

  function readEntry(entry, prefix) {
    return new Promise((resolve) => {
      if (entry.isFile) {
        entry.file((file) => resolve([{ path: prefix + file.name, file }]), () => resolve([]));
      } else if (entry.isDirectory) {
        const reader = entry.createReader();
        const all = [];
        const more = () => reader.readEntries(async (batch) => {
          if (!batch.length) {
            const nested = await Promise.all(all.map((e) => readEntry(e, prefix + entry.name + "/")));
            resolve(nested.flat());
          } else {
            all.push(...batch);
            more();
          }
        }, () => resolve([]));
        more();
      } else {
        resolve([]);
      }
    });
  }

  zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", async (e) => {
    e.preventDefault();
    zone.classList.remove("over");
    const entries = Array.from(e.dataTransfer.items).map((i) => i.webkitGetAsEntry()).filter(Boolean);
    const lists = await Promise.all(entries.map((entry) => readEntry(entry, "")));
    setFiles(lists.flat());
  });

  async function json(url, options) {
    const resp = await fetch(url, {
      credentials: "same-origin", ...options,
      headers: { "X-CSRFToken": csrf, ...(options && options.headers) },
    });
    const body = await resp.json().catch(() => ({}));
    if (!resp.ok) { const err = new Error(body.error || resp.statusText); err.body = body; err.status = resp.status; throw err; }
    return body;
  }

  function key(name, list) {
    return "audobon-upload:" + name + ":" + list.map((f) => `${f.path}:${f.file.size}`).join("|");
  }

  async function start(name, kind) {
    const k = key(name, files);
    const known = localStorage.getItem(k);
    if (known) {
      try { return [await json(`${form.dataset.createUrl}${known}/`), k]; } catch (e) { localStorage.removeItem(k); }
    }
    const state = await json(form.dataset.createUrl, {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ name, kind, files: files.map((f) => ({ path: f.path, size: f.file.size })) }),
    });
    localStorage.setItem(k, state.id);
    return [state, k];
  }

  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    if (!files.length) { say("Choose files or a folder first.", "error"); return; }
    const name = document.getElementById("id_name").value.trim();
    const kind = document.getElementById("id_kind").value;
    const total = files.reduce((n, f) => n + f.file.size, 0) || 1;
    let state, storeKey;
    try {
      [state, storeKey] = await start(name, kind);
    } catch (err) { say(err.message, "error"); return; }
    let done = state.files.reduce((n, f) => n + f.received, 0);
    const base = `${form.dataset.createUrl}${state.id}/`;
    for (let i = 0; i < files.length; i++) {
      const file = files[i].file;
      let offset = state.files[i].received;
      let failures = 0;
      while (offset < file.size) {
        const end = Math.min(offset + CHUNK, file.size);
        try {
          const r = await json(`${base}files/${i}/?offset=${offset}`, { method: "PUT", body: file.slice(offset, end) });
          done += r.received - offset;
          offset = r.received;
          failures = 0;
        } catch (err) {
          failures += 1;
          if (failures > RETRIES) { say(`Stopped: ${err.message}. Upload again to resume.`, "error"); return; }
          say(`Connection trouble (${err.message}); resuming…`, "resuming");
          await new Promise((r) => setTimeout(r, 500 * failures));
          try {
            const now = await json(base);  // ask the server how much arrived, go on from there
            done += now.files[i].received - offset;
            offset = now.files[i].received;
          } catch (e2) { /* try the chunk again */ }
        }
        bar.style.width = `${(100 * done / total).toFixed(1)}%`;
        say(`${(done / 1e6).toFixed(1)} of ${(total / 1e6).toFixed(1)} MB`);
      }
    }
    try {
      const fin = await json(`${base}finish/`, { method: "POST" });
      localStorage.removeItem(storeKey);
      bar.style.width = "100%";
      say("Uploaded; importing…", "done");
      window.location.href = fin.job_url;
    } catch (err) { say(err.message, "error"); }
  });
})();
