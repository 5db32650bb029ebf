// The workspace page's terminal: xterm.js (vendored, /assets/xterm.js) over the terminal
// session route, same origin, with the page's session cookie. Binary messages are terminal
// bytes both ways; text messages are JSON control: `resize` out, `exit` in.
"use strict";

(function () {
  const box = document.getElementById("terminal");
  const open = document.getElementById("terminal-open");
  const state = document.getElementById("terminal-state");
  if (!box || !open || typeof Terminal === "undefined") return;

  let term = null;
  let socket = null;

  // Columns and rows that fit the box (xterm's cell size once rendered, else a guess).
  function fitSize() {
    const cell = box.querySelector(".xterm-rows > div");
    const width = box.clientWidth - 16;
    const charWidth = term && term._core && term._core._renderService
      ? term._core._renderService.dimensions.css.cell.width : 0;
    const cols = Math.max(20, Math.floor(width / (charWidth || 8.4)));
    const rows = cell ? term.rows : 30;
    return { cols: Math.min(cols, 500), rows };
  }

  function connect() {
    open.disabled = true;
    box.hidden = false;
    delete box.dataset.exit;
    if (!term) {
      term = new Terminal({ cols: 100, rows: 30, fontSize: 14, cursorBlink: true, scrollback: 5000 });
      term.open(box);
      const { cols, rows } = fitSize();
      term.resize(cols, rows);
      term.onData((d) => {
        if (socket && socket.readyState === WebSocket.OPEN) socket.send(new TextEncoder().encode(d));
      });
      term.onResize(({ cols, rows }) => {
        if (socket && socket.readyState === WebSocket.OPEN) {
          socket.send(JSON.stringify({ type: "resize", rows, cols }));
        }
      });
      window.addEventListener("resize", () => {
        const { cols, rows } = fitSize();
        if (cols !== term.cols || rows !== term.rows) term.resize(cols, rows);
      });
    }
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const url = `${scheme}//${location.host}/api/v2/workspaces/${encodeURIComponent(box.dataset.workspace)}` +
      `/sessions/terminal?rows=${term.rows}&cols=${term.cols}`;
    state.textContent = "Connecting…";
    let opened = false;
    socket = new WebSocket(url);
    socket.binaryType = "arraybuffer";
    socket.onopen = () => {
      opened = true;
      box.dataset.connected = "true";
      state.textContent = "Connected";
      term.focus();
    };
    socket.onmessage = (ev) => {
      if (typeof ev.data === "string") {
        let msg = null;
        try { msg = JSON.parse(ev.data); } catch (_) { return; }
        if (msg && msg.type === "exit") {
          box.dataset.exit = String(msg.code);
          term.write(`\r\n[the shell exited with code ${msg.code}]\r\n`);
          state.textContent = `The shell exited with code ${msg.code}.`;
        }
        return;
      }
      term.write(new Uint8Array(ev.data));
    };
    socket.onclose = () => {
      delete box.dataset.connected;
      open.disabled = false;
      open.textContent = "Open a new terminal";
      if (!opened) {
        state.textContent = "Could not open a terminal: the workspace must be running with its agent connected.";
      } else if (box.dataset.exit === undefined) {
        state.textContent = "Disconnected.";
      }
    };
  }

  open.addEventListener("click", connect);
})();
