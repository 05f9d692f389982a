// The owner console's one script: it keeps each device's status and "last seen" current
// by polling /console/presence (one small JSON answer for all the owner's devices). Every
// action on the page is a plain form and works without it.
"use strict";

(() => {
  const root = document.querySelector("[data-presence]");
  if (!root) return;
  const url = root.dataset.presence;
  const every = Number(root.dataset.pollMs) || 2000;
  const live = document.querySelector("[data-live]");
  const onlineCount = document.querySelector("[data-online-count]");
  let serverOffset = 0; // server clock minus ours, so "12 s ago" follows the server
  let timer = null;
  let failures = 0;

  // The same wording as the server's `ago()` in pages.py.
  const ago = (seconds) => {
    const s = Math.max(0, Math.floor(seconds));
    if (s < 60) return `${s} s ago`;
    if (s < 3600) return `${Math.floor(s / 60)} min ago`;
    if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
    return `${Math.floor(s / 86400)} d ago`;
  };

  const exact = (iso) => `${iso.slice(0, 10)} ${iso.slice(11, 19)} UTC`;

  const tick = () => {
    const now = Date.now() + serverOffset;
    for (const time of document.querySelectorAll("time[data-seen][datetime]")) {
      time.textContent = ago((now - Date.parse(time.getAttribute("datetime"))) / 1000);
    }
  };

  const show = (row, state) => {
    const status = row.querySelector("[data-status]");
    if (status) {
      status.classList.toggle("is-online", state.online);
      status.classList.toggle("is-offline", !state.online);
      status.querySelector("[data-status-text]").textContent = state.online ? "Online" : "Offline";
    }
    const time = row.querySelector("time[data-seen]");
    if (time && state.last_seen_at && time.getAttribute("datetime") !== state.last_seen_at) {
      time.setAttribute("datetime", state.last_seen_at);
      time.title = exact(state.last_seen_at);
    }
  };

  const apply = (answer) => {
    serverOffset = Date.parse(answer.now) - Date.now();
    for (const row of document.querySelectorAll("[data-device]")) {
      const state = answer.devices[row.dataset.device];
      if (state) show(row, state);
    }
    if (onlineCount) {
      onlineCount.textContent = Object.values(answer.devices).filter((d) => d.online).length;
    }
    tick();
  };

  const setLive = (ok) => {
    if (!live) return;
    live.hidden = false;
    live.classList.toggle("is-paused", !ok);
    live.textContent = ok ? "live" : "live updates paused";
  };

  const schedule = (delay) => {
    clearTimeout(timer);
    timer = document.hidden ? null : setTimeout(poll, delay);
  };

  const poll = async () => {
    try {
      const response = await fetch(url, {
        credentials: "same-origin",
        cache: "no-store",
        headers: { Accept: "application/json" },
      });
      if (response.status === 403) {
        setLive(false); // signed out elsewhere: stop asking
        return;
      }
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      apply(await response.json());
      failures = 0;
      setLive(true);
      schedule(every);
    } catch (error) {
      failures += 1;
      setLive(false);
      schedule(Math.min(every * 2 ** failures, 30000)); // back off while the server is away
    }
  };

  // Hidden tabs stop asking; a tab brought back asks at once.
  document.addEventListener("visibilitychange", () => {
    if (document.hidden) schedule(0);
    else poll();
  });
  setInterval(tick, 1000);
  poll();
})();
