// Ranking widget: drag-and-drop and keyboard ranking with ties, "all answers wrong", submit.
// Plain JS, no build step. Cards only know their display position; the server maps positions
// back to answers. Every submission carries an idempotency key kept across retries, so a retry
// after a lost response never stores the same ranking twice.
(function () {
  "use strict";
  const ranker = document.getElementById("ranker");
  if (!ranker) return;
  const k = parseInt(ranker.dataset.k, 10);
  const mode = ranker.dataset.mode;
  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  const status = document.getElementById("status");
  const started = Date.now();
  const tiers = Array.from(ranker.querySelectorAll(".tier:not(.pool)"));
  const pool = document.getElementById("pool");
  let key = newKey();

  function newKey() {
    const b = new Uint8Array(16);
    crypto.getRandomValues(b);  // works on plain-HTTP intranets, unlike crypto.randomUUID
    return Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
  }
  const slotOf = (tier) => tier.querySelector(".slot");
  const tierOf = (card) => card.closest(".tier");

  function place(card, tier) {
    slotOf(tier).appendChild(card);
    card.focus();
    key = newKey();  // the ranking changed: this is a new submission
    say("");
  }

  function say(text, isError) {
    status.textContent = text;
    status.className = isError ? "error" : "";
  }

  // ---- keyboard: digits pick a tier, arrows move one tier, 0 back to the pool ----
  ranker.addEventListener("keydown", (e) => {
    const card = e.target.closest && e.target.closest(".card");
    if (!card || e.target !== card) return;
    const current = tierOf(card);
    const idx = tiers.indexOf(current);  // -1 = pool
    let dest = null;
    if (/^[1-9]$/.test(e.key) && parseInt(e.key, 10) <= k) dest = tiers[parseInt(e.key, 10) - 1];
    else if (e.key === "0" || e.key === "Escape") dest = pool;
    else if (e.key === "ArrowUp") dest = idx <= 0 ? pool : tiers[idx - 1];
    else if (e.key === "ArrowDown") dest = tiers[Math.min(idx + 1, k - 1)];
    if (dest) {
      e.preventDefault();
      if (dest !== current) place(card, dest);
    }
  });

  // ---- drag and drop ----
  ranker.addEventListener("dragstart", (e) => {
    const card = e.target.closest(".card");
    if (!card) return;
    e.dataTransfer.setData("text/plain", card.dataset.pos);
    e.dataTransfer.effectAllowed = "move";
    card.classList.add("dragging");
  });
  ranker.addEventListener("dragend", (e) => {
    const card = e.target.closest && e.target.closest(".card");
    if (card) card.classList.remove("dragging");
  });
  for (const tier of [pool, ...tiers]) {
    tier.addEventListener("dragover", (e) => { e.preventDefault(); tier.classList.add("over"); });
    tier.addEventListener("dragleave", () => tier.classList.remove("over"));
    tier.addEventListener("drop", (e) => {
      e.preventDefault();
      tier.classList.remove("over");
      const card = ranker.querySelector('.card[data-pos="' + e.dataTransfer.getData("text/plain") + '"]');
      if (card && tierOf(card) !== tier) place(card, tier);
    });
  }

  // ---- all answers wrong ----
  const allWrong = document.getElementById("all-wrong");
  const box = document.getElementById("replacement-box");
  const replacement = document.getElementById("replacement");
  allWrong.addEventListener("change", () => { box.hidden = !allWrong.checked; key = newKey(); });
  document.getElementById("idk-template").addEventListener("change", (e) => {
    if (e.target.value) replacement.value = e.target.value;
  });
  for (const el of document.querySelectorAll(".extras textarea, .extras select, .card input")) {
    el.addEventListener("change", () => { key = newKey(); });
  }

  const positions = (tier) => Array.from(slotOf(tier).querySelectorAll(".card"), (c) => parseInt(c.dataset.pos, 10));
  const value = (id) => { const el = document.getElementById(id); return el ? el.value : ""; };

  function collect() {
    const ranking = tiers.map(positions).filter((g) => g.length);
    const unplaced = positions(pool);
    if (unplaced.length) {
      if (!allWrong.checked) throw new Error("还有 " + unplaced.length + " 个回答没有排序");
      ranking.push(unplaced);  // with "all wrong", leftovers are tied last
    }
    if (allWrong.checked && !replacement.value.trim()) throw new Error("请填写或选择一个诚实的替代回答");
    const payload = { key: key, ranking: ranking, all_wrong: allWrong.checked,
                      replacement: allWrong.checked ? replacement.value : null,
                      seconds: (Date.now() - started) / 1000 };
    if (mode === "annotate") {
      const flags = {};
      for (const cb of ranker.querySelectorAll("input[data-flag]:checked")) {
        const f = cb.dataset.flag;
        (flags[f] = flags[f] || []).push(parseInt(cb.closest(".card").dataset.pos, 10));
      }
      payload.flags = flags;
      const based = value("edited-based-on");
      payload.edited = value("edited").trim() ? { text: value("edited"), based_on: based === "" ? null : parseInt(based, 10) } : null;
      payload.comment = value("comment");
    } else {
      payload.note = value("note");
    }
    return payload;
  }

  const button = document.getElementById("submit");
  button.addEventListener("click", async () => {
    let payload;
    try { payload = collect(); } catch (err) { say(err.message, true); return; }
    button.disabled = true;
    say("提交中…");
    try {
      const resp = await fetch(ranker.dataset.submit, {
        method: "POST", credentials: "same-origin",
        headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
        body: JSON.stringify(payload),
      });
      const data = await resp.json().catch(() => ({}));
      if (!resp.ok) { say(data.error || ("提交失败（" + resp.status + "）"), true); return; }
      say("已提交");
      window.location.assign(data.next);
    } catch (err) {
      say("网络错误，请再次点击提交（不会重复保存）", true);  // same key: a retry is safe
    } finally {
      button.disabled = false;
    }
  });
})();
