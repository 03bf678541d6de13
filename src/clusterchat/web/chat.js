// The protocol client, no UI: one WebSocket, requests matched to replies in
// order (every request gets exactly one reply), pushed messages handed to the
// app once each (by mid), reconnect with backoff and a ticket login.
// The same protocol as the terminal client: docs/PROTOCOL.md, modern dialect.
// It asks for receipts at login and acknowledges pushes (RECEIVED, no reply):
// every ACK_EVERY messages or ACK_EVERY_BYTES bytes, ACK_INTERVAL_MS after
// the first new one, before LOGOUT and when the page goes away; the server
// keeps what we did not acknowledge for our next login.

export const Msg = Object.freeze({
  LOGIN: 1, LOGIN_ACK: 2, LOGOUT: 3, REG: 4, REG_ACK: 5, ONE_CHAT: 6, ADD_FRIEND: 7,
  CREATE_GROUP: 8, ADD_GROUP: 9, GROUP_CHAT: 10, ERROR: 11, PING: 12, PONG: 13,
  ADD_FRIEND_ACK: 14, CREATE_GROUP_ACK: 15, ADD_GROUP_ACK: 16, LOGOUT_ACK: 17, CHAT_ACK: 18,
  LIST_FRIENDS: 19, FRIEND_LIST: 20, LIST_GROUPS: 21, GROUP_LIST: 22, NOTICE: 23,
  FRIEND_ADDED: 24,
  REMOVE_FRIEND: 30, BLOCK: 31, UNBLOCK: 32, LIST_BLOCKED: 33, BLOCKED_LIST: 34,
  LEAVE_GROUP: 35, REMOVE_MEMBER: 36, SET_ROLE: 37, EDIT_GROUP: 38, TRANSFER_GROUP: 39,
  DELETE_GROUP: 40, DONE: 41, FRIEND_EVENT: 42, GROUP_EVENT: 43, INVITE: 44,
  LIST_INVITES: 45, INVITE_LIST: 46, HISTORY: 60, HISTORY_PAGE: 61, RECEIVED: 63,
});
const PUSHED = new Set([Msg.ONE_CHAT, Msg.GROUP_CHAT, Msg.NOTICE, Msg.FRIEND_ADDED,
  Msg.FRIEND_EVENT, Msg.GROUP_EVENT]);
// ERRORs with which the server closes a connection of its own accord (186
// receipts too late, 187 too many held, or the node short of memory; 161 a
// timeout), `re` null: they answer no request (docs/PROTOCOL.md, Receipts).
const CLOSING = new Set([161, 186, 187]);
const KEEPALIVE_MS = 30000;
const RELOGIN_PATIENCE_MS = 30000; // "already online": the old node may still hold us
const SEEN_MAX = 4096;
const ACK_EVERY = 64;
const ACK_EVERY_BYTES = 256 * 1024; // well under the server's --receipt-bytes (2 MiB)
const ACK_INTERVAL_MS = 1000;
// Reconnecting waits 250 ms, then twice as long each time, up to this; each
// wait is 50-100% of that at random, so pages a busy node refused together
// (it sheds load: server/load.py) do not all come back in the same instant.
const RETRY_MAX_MS = 8000;

export class Disconnected extends Error {}

export class ChatSocket {
  constructor(url, { onPush, onState, onRelogin, onClosing }) {
    this.url = url;
    this.onPush = onPush;       // (msg) => void, once per mid
    this.onState = onState;     // ("connecting"|"online"|"offline", why, retry in ms) => void
    this.onRelogin = onRelogin; // (ack | null) => void after a reconnect's login
    this.onClosing = onClosing; // (errmsg) => void: the server is closing, saying why
    this.closing = "";          // ...which the close that follows is put down to
    this.ws = null;
    this.pending = [];
    this.seen = new Map();
    this.uid = 0;
    this.ticket = null;
    this.ready = false;
    this.closedByUs = false;
    this.delay = 250;
    this.timer = null;
    this.waiters = [];
    this.seenSeq = 0;  // receipts: the highest push number seen...
    this.ackedSeq = 0; // ...and acknowledged
    setInterval(() => { if (this.ready) this.request({ msgid: Msg.PING }).catch(() => {}); },
      KEEPALIVE_MS);
    // A one-shot timer set when a message arrives, not an interval: Chrome
    // runs a hidden tab's chained timers (an interval's every tick) once a
    // minute after 5 minutes, and a message waiting that long for its
    // receipt is past the server's --receipt-timeout (30 s): the tab would
    // be cut off (ERROR 186) for every message that came while it was hidden.
    this.ackTimer = null;
    if (typeof window !== "undefined") window.addEventListener("pagehide", () => this._ack());
  }

  /** LOGIN asking for receipts: numbering starts again with its reply. */
  async _login(fields) {
    this.seenSeq = this.ackedSeq = 0;
    const ack = await this._send({ msgid: Msg.LOGIN, receipts: true, ...fields });
    if (ack.errno === 0 && ack.receipts) {
      const carried = ack.offlinemsg || []; // numbered 1 to n
      this._saw(carried.length, carried.reduce((n, m) => n + m.length, 0));
    }
    return ack;
  }

  _saw(seq, bytes) {
    if (seq > this.seenSeq) {
      this.seenSeq = seq;
      this.unackedBytes = (this.unackedBytes || 0) + bytes;
      if (seq - this.ackedSeq >= ACK_EVERY || this.unackedBytes >= ACK_EVERY_BYTES) this._ack();
      else if (this.ackTimer === null) this.ackTimer = setTimeout(() => this._ack(), ACK_INTERVAL_MS);
    }
  }

  _ack() {
    clearTimeout(this.ackTimer);
    this.ackTimer = null;
    const ws = this.ws;
    if (this.seenSeq > this.ackedSeq && ws && ws.readyState === WebSocket.OPEN) {
      ws.send(JSON.stringify({ msgid: Msg.RECEIVED, seq: this.seenSeq }));
      this.ackedSeq = this.seenSeq;
      this.unackedBytes = 0;
    }
  }

  start() {
    this.closedByUs = false;
    this._open();
  }

  _open() {
    this.onState("connecting");
    const ws = new WebSocket(this.url);
    this.ws = ws;
    ws.onopen = async () => {
      this.delay = 250;
      if (this.uid && this.ticket) {
        const ack = await this._relogin();
        if (ws !== this.ws) return;
        this.onRelogin(ack);
      }
      this._setReady(true);
    };
    ws.onmessage = (event) => this._receive(event.data);
    ws.onclose = (event) => {
      if (ws !== this.ws) return;
      this.ws = null;
      this._setReady(false);
      this._failPending();
      const closing = this.closing;
      this.closing = "";
      if (this.closedByUs) return;
      const why = (closing && "closed by the server") || event.reason ||
        (event.code === 1006 ? "connection lost" : `closed (${event.code})`);
      const wait = Math.round(this.delay * (0.5 + Math.random() / 2));
      this.onState("offline", why, wait);
      clearTimeout(this.timer);
      this.timer = setTimeout(() => this._open(), wait);
      this.delay = Math.min(this.delay * 2, RETRY_MAX_MS);
    };
  }

  _setReady(ready) {
    this.ready = ready;
    if (ready) {
      this.onState("online");
      for (const resolve of this.waiters.splice(0)) resolve();
    }
  }

  /** Resolves once connected (and, after a reconnect, logged in again). */
  whenReady() {
    return this.ready ? Promise.resolve() : new Promise((resolve) => this.waiters.push(resolve));
  }

  async _relogin() {
    const deadline = Date.now() + RELOGIN_PATIENCE_MS;
    for (;;) {
      let ack;
      try {
        ack = await this._login({ id: this.uid, ticket: this.ticket });
      } catch {
        return null;
      }
      if (ack.errno === 0) {
        this._offline(ack);
        return ack;
      }
      if (![2, 4].includes(ack.errno) || Date.now() > deadline) {
        this.uid = 0;
        this.ticket = null;
        return ack;
      }
      await new Promise((r) => setTimeout(r, 500));
    }
  }

  _offline(ack) {
    for (const item of ack.offlinemsg || []) {
      try {
        this._push(typeof item === "string" ? JSON.parse(item) : item);
      } catch { /* a malformed stored message is skipped */ }
    }
  }

  _receive(text) {
    let msg;
    try {
      msg = JSON.parse(text);
    } catch {
      return;
    }
    if (msg === null || typeof msg !== "object") return;
    if (PUSHED.has(msg.msgid)) {
      if (typeof msg.seq === "number") this._saw(msg.seq, text.length);
      this._push(msg);
    } else if (msg.msgid === Msg.ERROR && msg.re === Msg.RECEIVED) {
      console.warn("receipt refused:", msg.errmsg); // RECEIVED has no reply: not a request's
    } else if (msg.msgid === Msg.ERROR && msg.re == null && CLOSING.has(msg.errno)) {
      // The server closes next, of its own accord: this answers no request
      // (what waits is in doubt, as at any close; the page reconnects).
      // Taken for the oldest request's reply, a chat the server had served
      // was shown refused.
      this.closing = String(msg.errmsg ?? "closing");
      if (this.onClosing) this.onClosing(this.closing);
    } else if (this.pending.length) this.pending.shift().resolve(msg);
  }

  _push(msg) {
    if (msg.mid !== undefined) {
      if (this.seen.has(msg.mid)) return; // delivery is at least once: same mid, shown once
      this.seen.set(msg.mid, true);
      if (this.seen.size > SEEN_MAX) this.seen.delete(this.seen.keys().next().value);
    }
    this.onPush(msg);
  }

  _failPending() {
    for (const p of this.pending.splice(0)) p.reject(new Disconnected("connection lost"));
  }

  _send(doc) {
    const ws = this.ws;
    if (!ws || ws.readyState !== WebSocket.OPEN) {
      return Promise.reject(new Disconnected("not connected"));
    }
    return new Promise((resolve, reject) => {
      this.pending.push({ resolve, reject });
      ws.send(JSON.stringify(doc));
    });
  }

  /** One request, one reply; rejects with Disconnected while reconnecting. */
  request(doc) {
    if (!this.ready) return Promise.reject(new Disconnected("reconnecting"));
    return this._send(doc);
  }

  async login(uid, password) {
    if (!this.ready) throw new Disconnected("reconnecting");
    const ack = await this._login({ id: uid, password });
    if (ack.errno === 0) {
      this.uid = uid;
      this.ticket = typeof ack.ticket === "string" ? ack.ticket : null;
      this._offline(ack);
    }
    return ack;
  }

  async resume(uid, ticket) {
    if (!this.ready) throw new Disconnected("reconnecting");
    const ack = await this._login({ id: uid, ticket });
    if (ack.errno === 0) {
      this.uid = uid;
      this.ticket = ticket;
      this._offline(ack);
    }
    return ack;
  }

  /** The server ended the session for good (a NOTICE with `event`
   * `displaced`, `kicked` or `banned`; it closes the connection next): the
   * ticket is dead, so the reconnect that follows does not log in with it. */
  forget() {
    this._ack(); // what arrived is not stored again for the next login, as at a logout
    this.uid = 0;
    this.ticket = null;
  }

  async logout() {
    try {
      this._ack(); // what arrived is not stored again for the next login
      return await this.request({ msgid: Msg.LOGOUT });
    } finally {
      this.uid = 0;
      this.ticket = null;
    }
  }
}
