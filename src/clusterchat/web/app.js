// The web client's UI. Every text that comes from the server (names, group
// names, messages) goes into the page with textContent, never as HTML.
import { ChatSocket, Disconnected, Msg } from "./chat.js";

const $ = (id) => document.getElementById(id);
const REFRESH_MS = 5000; // friends' online state and group members
const SESSION_KEY = "clusterchat.session";
const ENDED_KEY = "clusterchat.ended"; // why the server ended the last session, until a login
const HISTORY_PAGE = 50; // messages a history request asks for (docs/PROTOCOL.md, 60/61)

const state = {
  me: null,               // { id, name }
  friends: new Map(),     // id -> { id, name, state }
  groups: new Map(),      // id -> { id, groupname, groupdesc, users }
  convs: new Map(),       // "u:ID" | "g:ID" -> conversation
  active: null,           // key of the open conversation
  blocked: new Map(),     // id -> name: whom I block
  invites: [],            // open invitations: { groupid, groupname, by, byname }
  inviteOnly: new Map(),  // group id -> bool, as last heard (events, my own changes)
  everOnline: false,
  restartingSince: 0,     // when the node said it was shutting down (ms; 0: it did not)
  ended: false,           // the server ended the session for good; not connected since
  groupsAt: 0,            // when the group list was last read whole (ms)
  groupPages: 1,          // how many LIST_GROUPS pages it took
};

const wsUrl = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`;
const sock = new ChatSocket(wsUrl, { onPush, onState, onRelogin, onClosing });

// -- helpers -------------------------------------------------------------------------

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = String(text);
  return node;
}

function initials(name) {
  const parts = String(name || "?").trim().split(/\s+/).filter(Boolean);
  const chars = parts.length > 1 ? [parts[0], parts[1]] : [parts[0] || "?"];
  return chars.map((p) => Array.from(p)[0] || "?").join("").toUpperCase().slice(0, 2);
}

function paintAvatar(node, name, seed) {
  node.textContent = initials(name);
  node.style.setProperty("--hue", String((Number(seed) * 137) % 360));
}

function clock(ts) {
  const d = new Date(ts);
  const now = new Date();
  const hm = d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  return d.toDateString() === now.toDateString()
    ? hm : `${d.toLocaleDateString([], { month: "short", day: "numeric" })} ${hm}`;
}

function wireTime() {
  const d = new Date();
  const p = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} ` +
    `${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;
}

let toastTimer = null;
function toast(text, kind = "error") {
  const t = $("toast");
  t.textContent = text;
  t.className = `toast ${kind}`;
  t.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { t.hidden = true; }, 5000);
}

// A server's error text ("wrong id or password") as a sentence on the page.
function sentence(text) {
  const t = String(text ?? "").trim();
  if (!t) return t;
  return `${t[0].toUpperCase()}${t.slice(1)}${/[.!?…]$/.test(t) ? "" : "."}`;
}

function members(n) {
  return `${n} ${n === 1 ? "member" : "members"}`;
}

function banner(text, kind) {
  const b = $("banner");
  b.hidden = !text;
  b.textContent = text || "";
  b.className = `banner ${kind || ""}`;
}

// -- conversations -------------------------------------------------------------------

function conv(kind, id) {
  const key = `${kind}:${id}`;
  let c = state.convs.get(key);
  if (!c) {
    c = { key, kind, id: Number(id), messages: [], mids: new Set(), unread: 0, name: "",
      // History paged in from the server: the oldest row id loaded, whether older
      // ones remain, and a request in flight (docs/PROTOCOL.md, HISTORY).
      oldest: 0, more: true, loading: null, note: "" };
    state.convs.set(key, c);
  }
  return c;
}

function convName(c) {
  if (c.kind === "u") return state.friends.get(c.id)?.name || c.name || `user ${c.id}`;
  return state.groups.get(c.id)?.groupname || c.name || `group ${c.id}`;
}

// What a FRIEND_EVENT or GROUP_EVENT says, as the terminal client says it.
function eventText(msg) {
  const me = state.me?.id;
  const subject = Number(msg.id) === me ? "you" : String(msg.name ?? `user ${msg.id}`);
  const by = String(msg.byname ?? `user ${msg.by}`);
  const group = state.groups.get(Number(msg.groupid))?.groupname || `group ${msg.groupid}`;
  switch (msg.event) {
    case "unfriended": return `${subject} removed you from their friends`;
    case "left": return `${subject} left ${group}`;
    case "removed": return `${subject} ${subject === "you" ? "were" : "was"} removed from ${group} by ${by}`;
    case "role": {
      const now = { admin: "now an admin of", normal: "no longer an admin of",
        creator: "now the owner of" }[msg.role] || `now ${msg.role} in`;
      return `${subject} ${subject === "you" ? "are" : "is"} ${now} ${group}`;
    }
    case "edited": return `${by} renamed or re-described group ${msg.groupid}: ${msg.groupname}`;
    case "deleted": return `${group} was deleted by ${by}`;
    case "invited": return `${by} invited you to ${msg.groupname} (#${msg.groupid}): Join or Decline it under Invitations`;
    default: return `${group}: ${msg.event}`;
  }
}

// The NOTICEs after which the session is over for good (docs/PROTOCOL.md,
// NOTICE 23): the server closes the connection next and the ticket no longer
// works. What the page says, by the NOTICE's `event`; in the terminal
// client's words (client/session.py), with the page's "log in".
const ENDED = new Map([
  ["displaced", "You were logged out: this account logged in elsewhere (another window or device). "
    + "Log in again to use it here."],
  ["kicked", "You were logged out: an operator ended this session. "
    + "Log in again with your password."],
  ["banned", "You were logged out: an operator banned this account."],
]);
// A node from before `event` sends only the text (protocol/replies.py).
const ENDED_TEXTS = new Map([
  ["you logged in somewhere else; this session has ended", "displaced"],
  ["an operator ended this session", "kicked"],
  ["an operator banned this account; this session has ended", "banned"],
]);

function endedBy(msg) {
  if (ENDED.has(msg.event)) return msg.event;
  return msg.event === undefined ? ENDED_TEXTS.get(msg.text) : undefined;
}

// The session is over: no resuming it (now, at the reconnect that follows,
// or after a reload); the log-in form says why, with the user id filled in.
function sessionEnded(why) {
  const uid = state.me?.id;
  sock.forget();
  sessionStorage.removeItem(SESSION_KEY);
  sessionStorage.setItem(ENDED_KEY, JSON.stringify({ why, id: uid ?? null }));
  state.ended = true; // the connection's close that follows is expected: no banner
  clearTimeout(toastTimer);
  $("toast").hidden = true; // the session's last news ("… added you") is not news now
  reset();
  setMode(false);
  showEnded(why, uid);
}

function showEnded(why, uid) {
  if (uid) $("login-id").value = String(uid);
  showAuth(ENDED.get(why));
  if (uid) $("password").focus();
}

function onPush(msg) {
  if (msg.msgid === Msg.NOTICE) {
    const ended = endedBy(msg);
    if (ended) {
      sessionEnded(ended);
      return;
    }
    if (msg.event === "shutdown") {
      // The node is going away; this page reconnects by itself (to it once
      // it is back, or to another behind the same address), so the text
      // for people who must reconnect themselves is not shown: a calm state.
      state.restartingSince = Date.now();
      banner(RESTARTING, "info");
      return;
    }
    toast(String(msg.text ?? ""), "info");
    return;
  }
  if (msg.msgid === Msg.FRIEND_ADDED) {
    const f = msg.friend || {};
    const id = Number(f.id);
    state.friends.set(id, { id, name: String(f.name ?? `user ${id}`), state: String(f.state ?? "online") });
    toast(`${String(f.name ?? `user ${id}`)} added you as a friend`, "info");
    renderSidebar();
    return;
  }
  if (msg.msgid === Msg.FRIEND_EVENT || msg.msgid === Msg.GROUP_EVENT) {
    if (msg.event === "edited") state.inviteOnly.set(Number(msg.groupid), Boolean(msg.inviteonly));
    toast(eventText(msg), "info");
    refreshForEvent();
    return;
  }
  let c;
  if (msg.msgid === Msg.ONE_CHAT) {
    c = conv("u", msg.id);
    const f = state.friends.get(Number(msg.id));
    if (f && f.state !== "online") { f.state = "online"; renderSidebar(); }
  } else if (msg.msgid === Msg.GROUP_CHAT) {
    c = conv("g", msg.groupid);
  } else {
    return;
  }
  if (msg.mid !== undefined) {
    if (c.mids.has(msg.mid)) return;
    c.mids.add(msg.mid);
  }
  if (!c.name && msg.msgid === Msg.ONE_CHAT) c.name = String(msg.name ?? "");
  const entry = {
    mine: false, from: Number(msg.id), name: String(msg.name ?? `user ${msg.id}`),
    text: String(msg.msg ?? ""), ts: Number(msg.ts) || Date.parse(msg.time) || Date.now(),
    mid: msg.mid,
  };
  const at = placeOf(c.messages, entry);
  c.messages.splice(at, 0, entry);
  if (state.active === c.key && !document.hidden) {
    if (at === c.messages.length - 1) appendMessage(c, entry);
    else showPlaced(c);
  } else c.unread += 1;
  renderSidebar();
  renderTitle();
}

// What was stored for a while (a batch lost between nodes, or what a
// connection with receipts held when it ended) can arrive after messages
// sent later: it is placed by the time the server took it, before others'
// later messages, as history pages are. One's own messages stay where they
// were typed (their time is this computer's until the server answers).
function placeOf(messages, m) {
  let i = messages.length;
  while (i > 0 && !messages[i - 1].mine && later(messages[i - 1], m)) i -= 1;
  return i;
}

// Whether a was taken after b: by time, then, within one millisecond of one
// node ("<node>-<n>" mids), by the node's count.
function later(a, b) {
  if (a.ts !== b.ts) return a.ts > b.ts;
  const [na, sa] = midParts(a.mid);
  const [nb, sb] = midParts(b.mid);
  return na !== null && na === nb && sa > sb;
}

function midParts(mid) {
  const s = String(mid ?? "");
  const dash = s.lastIndexOf("-");
  const n = Number(s.slice(dash + 1));
  return dash > 0 && Number.isInteger(n) ? [s.slice(0, dash), n] : [null, 0];
}

// A message placed before others: the conversation drawn again, the reader
// left where they were (at the bottom if they were there).
function showPlaced(c) {
  const list = $("messages");
  const fromBottom = list.scrollHeight - list.scrollTop;
  const atBottom = fromBottom - list.clientHeight < 80;
  renderMessages(c);
  list.scrollTop = atBottom ? list.scrollHeight : list.scrollHeight - fromBottom;
}

function renderTitle() {
  let unread = 0;
  for (const c of state.convs.values()) unread += c.unread;
  document.title = unread ? `(${unread}) clusterchat` : "clusterchat";
}

// -- sidebar -------------------------------------------------------------------------

// Someone's state as last heard, while connected; disconnected, nobody's is
// known (the list would go on saying "online" about people who left).
function presence(st) {
  if (!sock.ready) return "unknown";
  return st === "online" ? "online" : "offline";
}

const PRESENCE_TEXT = { online: "online", offline: "offline", unknown: "not connected" };

function convItem(c, label, sub, seen) {
  const li = el("li", "conv");
  li.dataset.key = c.key;
  li.dataset.testid = `conv-${c.key}`;
  if (state.active === c.key) li.classList.add("active");
  const av = el("div", "avatar");
  paintAvatar(av, label, c.id + (c.kind === "g" ? 7 : 0));
  if (c.kind === "g") av.classList.add("group");
  if (seen !== undefined) {
    const dot = el("span", `dot ${seen === "online" ? "on" : "off"}`);
    dot.title = PRESENCE_TEXT[seen];
    av.append(dot);
  }
  const who = el("div", "who");
  who.append(el("div", "name", label));
  const last = c.messages[c.messages.length - 1];
  const by = last && (last.mine ? "You: " : c.kind === "g" ? `${last.name}: ` : "");
  who.append(el("div", "sub", last ? `${by}${last.text}` : sub));
  li.append(av, who);
  if (c.unread) li.append(el("span", "badge", c.unread));
  li.addEventListener("click", () => open(c.key));
  return li;
}

function renderSidebar() {
  const friends = $("friends");
  const groups = $("groups");
  const fItems = [];
  const known = new Set();
  const sorted = [...state.friends.values()].sort((a, b) =>
    (b.state === "online") - (a.state === "online") || a.name.localeCompare(b.name));
  for (const f of sorted) {
    const c = conv("u", f.id);
    known.add(c.key);
    const seen = presence(f.state);
    fItems.push(convItem(c, f.name, PRESENCE_TEXT[seen], seen));
  }
  for (const c of state.convs.values()) { // people who wrote without being friends
    if (c.kind === "u" && !known.has(c.key) && c.messages.length) {
      fItems.push(convItem(c, convName(c), `user ${c.id}`, undefined));
    }
  }
  friends.replaceChildren(...fItems);
  $("friends-empty").hidden = fItems.length > 0;
  const gItems = [];
  for (const g of [...state.groups.values()].sort((a, b) => a.groupname.localeCompare(b.groupname))) {
    const c = conv("g", g.id);
    gItems.push(convItem(c, g.groupname, `${members((g.users || []).length)} · #${g.id}`));
  }
  groups.replaceChildren(...gItems);
  $("groups-empty").hidden = gItems.length > 0;
  if (state.active) renderHead(state.convs.get(state.active));
}

// -- the open conversation -------------------------------------------------------------

function open(key) {
  state.active = key;
  const c = state.convs.get(key);
  c.unread = 0;
  $("app").classList.add("showing-conv");
  $("placeholder").hidden = true;
  $("conversation").hidden = false;
  $("members").hidden = true;
  $("actions").hidden = true;
  renderHead(c);
  renderMessages(c);
  $("messages").scrollTop = $("messages").scrollHeight;
  renderSidebar();
  renderTitle();
  $("text").focus();
  if (!c.oldest && c.more) loadHistory(c);
}

function renderMessages(c) {
  const list = $("messages");
  const top = el("li", "history-edge");
  top.id = "history-edge";
  top.textContent = edgeText(c);
  list.replaceChildren(top);
  for (const m of c.messages) appendMessage(c, m, false);
}

// A page of older messages, newest first from the server; shown in time order
// above what the conversation has, without moving what the reader looks at.
function loadHistory(c) {
  if (c.loading || !c.more) return c.loading;
  c.loading = (async () => {
    const doc = { msgid: Msg.HISTORY, limit: HISTORY_PAGE, before: c.oldest };
    doc[c.kind === "u" ? "userid" : "groupid"] = c.id;
    let page;
    try {
      await sock.whenReady();
      page = await sock.request(doc);
    } catch {
      c.loading = null;
      if (state.active === c.key) renderEdge(c); // not "Loading…" for ever
      return; // reconnecting: the next scroll or open asks again
    } finally {
      c.loading = null;
    }
    if (page.msgid !== Msg.HISTORY_PAGE) {
      // History off (180), not a member (181), no such group (130): said at
      // the top, where "Start of the conversation" was a wrong guess. Other
      // refusals (busy, too fast) pass: the next open or scroll asks again.
      c.note = sentence(page.errmsg || "earlier messages are not available");
      if ([130, 180, 181, 182, 183, 184].includes(Number(page.errno))) c.more = false;
      if (state.active === c.key) renderEdge(c);
      return;
    }
    c.note = "";
    const older = [];
    for (const h of Array.isArray(page.messages) ? page.messages : []) {
      const id = Number(h.id);
      if (id && (!c.oldest || id < c.oldest)) c.oldest = id;
      if (h.mid !== undefined && c.mids.has(h.mid)) continue; // already shown live
      if (h.mid !== undefined) c.mids.add(h.mid);
      const mine = Number(h.from) === state.me?.id;
      older.push({ mine, from: Number(h.from), name: String(h.name || `user ${h.from}`),
        text: String(h.msg ?? ""), ts: Number(h.ts) || 0, mid: h.mid, kept: true });
    }
    c.more = Boolean(page.more) && c.oldest > 0;
    // Pages follow the order rows were written; people read by time.
    older.reverse(); // oldest first: messages of the same millisecond keep their order
    c.messages = [...older, ...c.messages].sort((a, b) => a.ts - b.ts);
    if (state.active !== c.key) { renderSidebar(); return; }
    const list = $("messages");
    const fromBottom = list.scrollHeight - list.scrollTop;
    renderMessages(c);
    list.scrollTop = list.scrollHeight - fromBottom;
    renderSidebar();
    if (c.more && list.scrollHeight <= list.clientHeight) loadHistory(c); // nothing to scroll yet
  })();
  if (state.active === c.key) renderEdge(c);
  return c.loading;
}

function edgeText(c) {
  if (c.loading) return "Loading earlier messages…";
  if (c.note) return c.note;
  return c.more ? "Scroll up for earlier messages" : "Start of the conversation";
}

function renderEdge(c) {
  const edge = $("history-edge");
  if (edge) edge.textContent = edgeText(c);
}

function renderHead(c) {
  if (!c) return;
  const name = convName(c);
  $("conv-title").textContent = name;
  paintAvatar($("conv-avatar"), name, c.id + (c.kind === "g" ? 7 : 0));
  $("conv-avatar").classList.toggle("group", c.kind === "g");
  if (c.kind === "u") {
    const f = state.friends.get(c.id);
    $("conv-sub").textContent = f ? PRESENCE_TEXT[presence(f.state)] : `user ${c.id}`;
    $("members-btn").hidden = true;
  } else {
    const g = state.groups.get(c.id);
    const online = renderMembers(c.id, g);
    $("conv-sub").textContent = sock.ready
      ? `group #${c.id} · ${members(online.of)}, ${online.n} online`
      : `group #${c.id} · ${members(online.of)}`;
    $("members-btn").hidden = false;
  }
  renderActions(c);
}

// The member panel as last drawn, and what from: it is drawn again only when
// the group, its member list (a new array only when a refresh read a change:
// see sameMembers), whether presence is known, or who I am changed. Every
// message redraws the sidebar and the head; a group of 1,000 was 1,000 list
// items built again for each message.
const NO_USERS = Object.freeze([]);
let drawn = { gid: 0, users: null, ready: null, me: null, online: { n: 0, of: 0 } };

function renderMembers(gid, g) {
  const users = g?.users || NO_USERS;
  const me = state.me?.id ?? null;
  if (gid === drawn.gid && users === drawn.users && sock.ready === drawn.ready && me === drawn.me) {
    return drawn.online;
  }
  let n = 0;
  const items = users.map((u) => {
    const on = presence(u.state) === "online";
    if (on) n += 1;
    const li = el("li", "member");
    li.append(el("span", `dot ${on ? "on" : "off"}`));
    li.append(el("span", "name", u.name));
    if (u.role === "creator" || u.role === "admin") li.append(el("span", "role", u.role));
    const acts = memberActions(g, u);
    if (acts) li.append(acts);
    return li;
  });
  $("member-list").replaceChildren(...items);
  drawn = { gid, users, ready: sock.ready, me, online: { n, of: users.length } };
  return drawn.online;
}

// A group's members as read again are the ones it has (its array kept, so
// its panel is not drawn again) unless one came, went, or changed name, role
// or presence.
function sameMembers(old, users) {
  if (!old || old.length !== users.length) return false;
  for (let i = 0; i < users.length; i += 1) {
    const a = old[i];
    const b = users[i];
    if (a.id !== b.id || a.name !== b.name || a.state !== b.state || a.role !== b.role) return false;
  }
  return true;
}

// -- managing friends and groups --------------------------------------------------------

const RANK = { normal: 0, admin: 1, creator: 2 };

function myRole(g) {
  return g?.users?.find((u) => u.id === state.me?.id)?.role || "normal";
}

function actButton(label, testid, doc, done) {
  const b = el("button", "ghost", label);
  b.dataset.testid = testid;
  b.addEventListener("click", () => manage(doc, done));
  return b;
}

// What I may do to one member, by my role (the server checks it again).
function memberActions(g, u) {
  const mine = RANK[myRole(g)] ?? 0;
  if (!state.me || u.id === state.me.id || mine < 1 || u.role === "creator") return null;
  const box = el("span", "acts");
  const gid = g.id;
  if (u.role === "normal") {
    box.append(actButton("Remove", `kick-${u.id}`, { msgid: Msg.REMOVE_MEMBER, groupid: gid, userid: u.id },
      `${u.name} removed`));
    box.append(actButton("Make admin", `admin-${u.id}`,
      { msgid: Msg.SET_ROLE, groupid: gid, userid: u.id, role: "admin" }, `${u.name} is an admin`));
  } else if (mine >= 2) {
    box.append(actButton("Remove", `kick-${u.id}`, { msgid: Msg.REMOVE_MEMBER, groupid: gid, userid: u.id },
      `${u.name} removed`));
    box.append(actButton("Demote", `deadmin-${u.id}`,
      { msgid: Msg.SET_ROLE, groupid: gid, userid: u.id, role: "normal" }, `${u.name} is no longer an admin`));
  }
  if (mine >= 2) {
    box.append(actButton("Make owner", `owner-${u.id}`,
      { msgid: Msg.TRANSFER_GROUP, groupid: gid, userid: u.id }, `${u.name} owns the group now`));
  }
  return box;
}

function renderActions(c) {
  const friend = c.kind === "u";
  $("friend-actions").hidden = !friend;
  $("group-actions").hidden = friend;
  if (friend) {
    const blocked = state.blocked.has(c.id);
    $("act-block").hidden = blocked;
    $("act-unblock").hidden = !blocked;
    $("act-unfriend").hidden = !state.friends.has(c.id);
  } else {
    const role = myRole(state.groups.get(c.id));
    $("group-admin").hidden = (RANK[role] ?? 0) < 1;
    $("act-delete").hidden = role !== "creator";
    $("act-inviteonly").checked = Boolean(state.inviteOnly.get(c.id));
  }
}

async function manage(doc, done) {
  const ack = await ask(doc, Msg.DONE);
  if (!ack) return false;
  if (done) toast(done, "info");
  await refresh();
  return true;
}

function activeConv() {
  return state.active ? state.convs.get(state.active) : null;
}

function closeConv() {
  state.active = null;
  $("conversation").hidden = true;
  $("placeholder").hidden = false;
  $("app").classList.remove("showing-conv");
}

function renderManaged() {
  const blocked = [...state.blocked.entries()].map(([id, name]) => {
    const li = el("li");
    li.append(el("span", "name", `${name} #${id}`));
    li.append(actButton("Unblock", `unblock-${id}`, { msgid: Msg.UNBLOCK, userid: id }, `${name} unblocked`));
    return li;
  });
  $("blocked").replaceChildren(...blocked);
  $("blocked-section").hidden = blocked.length === 0;
  const invites = state.invites.map((i) => {
    const li = el("li");
    li.append(el("span", "name", `${i.groupname} #${i.groupid} · from ${i.byname}`));
    const join = el("button", "ghost", "Join");
    join.dataset.testid = `accept-${i.groupid}`;
    join.addEventListener("click", async () => {
      if (await ask({ msgid: Msg.ADD_GROUP, groupid: i.groupid }, Msg.ADD_GROUP_ACK)) {
        await refresh();
        open(conv("g", i.groupid).key);
      }
    });
    li.append(join);
    // Leaving a group one is only invited to declines the invitation.
    li.append(actButton("Decline", `decline-${i.groupid}`, { msgid: Msg.LEAVE_GROUP, groupid: i.groupid },
      `Invitation to ${i.groupname} declined`));
    return li;
  });
  $("invites").replaceChildren(...invites);
  $("invites-section").hidden = invites.length === 0;
}

function wireManage() {
  // The two panels share a place: opening one closes the other.
  $("members-btn").addEventListener("click", () => { $("actions").hidden = true; });
  $("actions-btn").addEventListener("click", () => {
    $("members").hidden = true;
    $("actions").hidden = !$("actions").hidden;
    const c = activeConv();
    if (c) renderActions(c);
  });
  const onConv = (kind, make) => async () => {
    const c = activeConv();
    if (!c || c.kind !== kind) return;
    const [doc, done, leaves] = make(c);
    if (await manage(doc, done) && leaves) {
      state.convs.delete(c.key);
      closeConv();
      renderSidebar();
    }
  };
  $("act-unfriend").addEventListener("click", onConv("u", (c) =>
    [{ msgid: Msg.REMOVE_FRIEND, friendid: c.id }, `${convName(c)} is no longer your friend`, false]));
  $("act-block").addEventListener("click", onConv("u", (c) =>
    [{ msgid: Msg.BLOCK, userid: c.id }, `${convName(c)} is blocked`, false]));
  $("act-unblock").addEventListener("click", onConv("u", (c) =>
    [{ msgid: Msg.UNBLOCK, userid: c.id }, `${convName(c)} is unblocked`, false]));
  $("act-leave").addEventListener("click", onConv("g", (c) =>
    [{ msgid: Msg.LEAVE_GROUP, groupid: c.id }, `You left ${convName(c)}`, true]));
  $("act-delete").addEventListener("click", onConv("g", (c) =>
    [{ msgid: Msg.DELETE_GROUP, groupid: c.id }, `${convName(c)} deleted`, true]));
  const form = (id, input, make) => $(id).addEventListener("submit", async (e) => {
    e.preventDefault();
    const c = activeConv();
    const value = $(input).value.trim();
    if (!c || c.kind !== "g") return;
    const made = make(c, value);
    if (!made) return;
    if (await manage(...made)) $(input).value = "";
  });
  form("act-rename", "rename-name", (c, v) => (v
    ? [{ msgid: Msg.EDIT_GROUP, groupid: c.id, groupname: v }, `Renamed to ${v}`] : null));
  form("act-describe", "describe-text", (c, v) =>
    [{ msgid: Msg.EDIT_GROUP, groupid: c.id, groupdesc: v }, "Description changed"]);
  form("act-invite", "invite-id", (c, v) => {
    const id = Number(v);
    if (!Number.isInteger(id) || id < 1) { toast("A user id is a number."); return null; }
    return [{ msgid: Msg.INVITE, groupid: c.id, userid: id }, `Invited user ${id}`];
  });
  $("act-inviteonly").addEventListener("change", async (e) => {
    const c = activeConv();
    if (!c || c.kind !== "g") return;
    const on = e.target.checked;
    if (await manage({ msgid: Msg.EDIT_GROUP, groupid: c.id, inviteonly: on },
      on ? "Joining now needs an invitation" : "Anyone may join now")) {
      state.inviteOnly.set(c.id, on);
    } else {
      e.target.checked = !on;
    }
  });
}

const STATUS_TEXT = {
  waiting: "waiting for the connection…",
  sending: "sending…",
  sent: "sent",
  delivered: "delivered",
  stored: "stored · they get it when they log in",
  failed: "not sent",
  unconfirmed: "connection lost before the server confirmed it",
};

function appendMessage(c, m, scroll = true) {
  const list = $("messages");
  const li = el("li", `msg ${m.mine ? "mine" : "theirs"}`);
  const prev = c.messages[c.messages.indexOf(m) - 1];
  if (prev && prev.from === m.from && prev.mine === m.mine && m.ts - prev.ts < 120000) {
    li.classList.add("cont");
  }
  const meta = el("div", "meta");
  if (!m.mine && c.kind === "g") meta.append(el("span", "sender", m.name));
  else if (!m.mine) meta.append(el("span", "sender", m.name));
  meta.append(el("time", "time", clock(m.ts)));
  const bubble = el("div", "bubble", m.text);
  li.append(meta, bubble);
  if (m.mine && m.status) { // none for one's own messages read back from history
    const st = el("div", `status ${m.status}`, STATUS_TEXT[m.status] || m.status);
    if (m.error) st.title = m.error;
    li.append(st);
    m.node = st;
  }
  const nearBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 80;
  list.append(li);
  if (scroll || nearBottom) list.scrollTop = list.scrollHeight;
}

function setStatus(m, status, error) {
  m.status = status;
  if (error) m.error = error;
  if (m.node) {
    m.node.className = `status ${status}`;
    m.node.textContent = error ? `${STATUS_TEXT[status]}: ${error}` : STATUS_TEXT[status];
  }
}

async function send() {
  const box = $("text");
  const text = box.value;
  if (!text.trim() || !state.active) return;
  box.value = "";
  autoGrow();
  const c = state.convs.get(state.active);
  const m = { mine: true, from: state.me.id, name: state.me.name, text, ts: Date.now(),
    status: sock.ready ? "sending" : "waiting" };
  c.messages.push(m);
  appendMessage(c, m);
  renderSidebar();
  const doc = c.kind === "u"
    ? { msgid: Msg.ONE_CHAT, toid: c.id, msg: text, time: wireTime() }
    : { msgid: Msg.GROUP_CHAT, groupid: c.id, msg: text, time: wireTime() };
  await sock.whenReady();
  setStatus(m, "sending");
  try {
    const ack = await sock.request(doc);
    if (ack.msgid === Msg.CHAT_ACK) {
      m.mid = ack.mid;
      c.mids.add(ack.mid); // not shown twice when history pages it in
      if (ack.ts) m.ts = ack.ts;
      setStatus(m, ack.status);
    } else {
      setStatus(m, "failed", String(ack.errmsg ?? "refused"));
    }
  } catch (err) {
    setStatus(m, err instanceof Disconnected ? "unconfirmed" : "failed");
  }
}

function autoGrow() {
  const box = $("text");
  box.style.height = "auto";
  box.style.height = `${Math.min(box.scrollHeight, 160)}px`;
}

// -- server lists --------------------------------------------------------------------

// Every group, page after page: a reply holds about 4,000 members' worth and
// says `more` when groups follow (docs/PROTOCOL.md, LIST_GROUPS 21). A page
// refused as too fast (ERROR 170, the flood limit) is asked again when the
// refusal says ("retry in N s"; a refusal costs a token too, so asking again
// sooner, at the limit's own rate, would be refused for ever); null if one is
// refused otherwise (the list then stays as it was).
const TOO_FAST = 170;
function retryMs(errmsg, waits) {
  const told = /retry in ([0-9.]+) s/.exec(String(errmsg || ""));
  const backoff = Math.min(1000 * 2 ** waits, 8000);
  return told ? Math.max(Number(told[1]) * 1000 + 50, 250) : backoff;
}
async function listGroups() {
  const all = [];
  let after = 0;
  let pages = 0;
  for (let waits = 0; ;) {
    const gl = await sock.request(after ? { msgid: Msg.LIST_GROUPS, after } : { msgid: Msg.LIST_GROUPS });
    if (gl.msgid === Msg.ERROR && Number(gl.errno) === TOO_FAST && waits < 60) {
      await new Promise((r) => setTimeout(r, retryMs(gl.errmsg, waits)));
      waits += 1;
      continue;
    }
    if (gl.msgid !== Msg.GROUP_LIST) return null;
    pages += 1;
    const groups = Array.isArray(gl.groups) ? gl.groups : [];
    all.push(...groups);
    const last = Number(groups[groups.length - 1]?.id);
    if (!gl.more || !(last > after)) { // the ids must move on: no endless loop
      state.groupPages = pages;
      return all;
    }
    after = last;
  }
}

// One refresh at a time: a long group list takes several round trips, and the
// timer or an event asking meanwhile gets one more refresh after it. The
// timer's refresh (full: false) lists groups only every REFRESH_MS per page
// the list took last time: a member of many big groups would otherwise have
// the server send its whole list, megabytes of members, every 5 s. A change
// (an event, one's own action, a login) lists them at once.
let refreshing = null;
let refreshAgain = false;
let refreshFull = false;

// Events come at whatever pace others cause them (any group's admin may
// invite anyone, again and again): the lists are asked again at most once
// a second for them. A refresh per event (3 requests or more) spent the
// page's own flood allowance: its chats were refused as too fast (ERROR 170).
const EVENT_REFRESH_MS = 1000;
let eventRefreshAt = 0;
let eventRefreshTimer = null;

function refreshForEvent() {
  if (eventRefreshTimer !== null) return; // one is due: it will see this event's change too
  const wait = Math.max(0, eventRefreshAt + EVENT_REFRESH_MS - Date.now());
  eventRefreshTimer = setTimeout(() => {
    eventRefreshTimer = null;
    eventRefreshAt = Date.now();
    refresh();
  }, wait);
}

function refresh(full = true) {
  if (!state.me || !sock.ready) return Promise.resolve();
  refreshFull = refreshFull || full;
  if (refreshing) {
    refreshAgain = true;
    return refreshing;
  }
  refreshing = (async () => {
    try {
      do {
        refreshAgain = false;
        const groupsDue = refreshFull
          // (half a tick early: the timer is not exact, a list of one page is due each tick)
          || Date.now() - state.groupsAt >= REFRESH_MS * (Math.max(1, state.groupPages) - 0.5);
        refreshFull = false;
        await refreshOnce(groupsDue);
      } while (refreshAgain && state.me && sock.ready);
    } finally {
      refreshing = null;
    }
  })();
  return refreshing;
}

async function refreshOnce(withGroups) {
  const me = state.me;
  try {
    const [fl, groups, bl, il] = await Promise.all([
      sock.request({ msgid: Msg.LIST_FRIENDS }),
      withGroups ? listGroups() : null,
      sock.request({ msgid: Msg.LIST_BLOCKED }),
      sock.request({ msgid: Msg.LIST_INVITES }),
    ]);
    if (state.me !== me) return; // logged out (or in as someone else) meanwhile
    if (bl.msgid === Msg.BLOCKED_LIST) {
      state.blocked = new Map((bl.blocked || []).map((b) => [Number(b.id), String(b.name)]));
    }
    if (il.msgid === Msg.INVITE_LIST) {
      state.invites = (il.invites || []).map((i) => ({ groupid: Number(i.groupid),
        groupname: String(i.groupname), by: Number(i.by), byname: String(i.byname) }));
    }
    renderManaged();
    if (fl.msgid === Msg.FRIEND_LIST) {
      state.friends = new Map((fl.friends || []).map((f) =>
        [Number(f.id), { id: Number(f.id), name: String(f.name), state: String(f.state) }]));
    }
    if (groups) {
      state.groupsAt = Date.now();
      const before = state.groups;
      state.groups = new Map(groups.map((g) => {
        const id = Number(g.id);
        const users = (g.users || []).map((u) => ({ id: Number(u.id), name: String(u.name),
          state: String(u.state), role: String(u.role) }));
        const old = before.get(id)?.users;
        return [id, {
          id, groupname: String(g.groupname), groupdesc: String(g.groupdesc ?? ""),
          users: sameMembers(old, users) ? old : users,
        }];
      }));
    }
    renderSidebar();
    const c = activeConv();
    if (c && c.kind === "g" && !state.groups.has(c.id)) closeConv(); // left, removed, deleted
  } catch { /* reconnecting: the next refresh catches up */ }
}
setInterval(() => refresh(false), REFRESH_MS);

// -- connection state --------------------------------------------------------------------

// What the page says while the node that said it was shutting down is away
// (NOTICE event "shutdown"); past RESTART_PATIENCE_MS it says what it says of
// any lost connection.
const RESTARTING = "Server restarting, reconnecting…";
const RESTART_PATIENCE_MS = 60000;

function onState(s, why, retryMs) {
  document.body.classList.toggle("offline", s !== "online");
  if (state.me) renderSidebar(); // presence: known again, or no longer
  if (s === "online") {
    banner("");
    state.everOnline = true;
    state.wasOffline = false;
    state.restartingSince = 0;
    state.ended = false;
  } else if (state.ended) {
    banner(""); // the close after a NOTICE that ended the session: the form says why
  } else if (state.restartingSince && Date.now() - state.restartingSince < RESTART_PATIENCE_MS) {
    state.wasOffline = true;
    banner(RESTARTING, "info");
  } else if (s === "offline") {
    state.wasOffline = true;
    const secs = Math.max(1, Math.round(retryMs / 1000));
    // A browser is not told why a WebSocket was refused: a busy node that
    // sheds load (HTTP 503) and one that is down look the same to it.
    banner(state.everOnline
      ? `Disconnected (${why}). Reconnecting in ${secs} s…`
      : `Server busy or unreachable. Retrying in ${secs} s…`, "warn");
  } else if (state.everOnline) {
    banner("Reconnecting…", "warn");
  }
}

// The server closes this connection of its own accord (ERROR 186/187:
// receipts not confirmed in time, too many held, or the node short of
// memory) and says why; the page reconnects and gets what it had not
// confirmed. A chat waiting for its reply then is in doubt, not refused.
function onClosing(why) {
  toast(`The server closed the connection: ${sentence(why)} Reconnecting…`, "info");
}

function onRelogin(ack) {
  if (!ack || ack.errno === 0) {
    refresh();
    return;
  }
  sessionStorage.removeItem(SESSION_KEY);
  showAuth(`Your session ended: ${ack.errmsg || "please log in again"}`);
}

// -- log in, register, log out ---------------------------------------------------------------

let registering = false;

function setMode(reg) {
  registering = reg;
  $("tab-login").setAttribute("aria-selected", String(!reg));
  $("tab-register").setAttribute("aria-selected", String(reg));
  $("row-id").hidden = reg;
  $("row-name").hidden = !reg;
  $("auth-submit").textContent = reg ? "Create account" : "Log in";
  $("password").autocomplete = reg ? "new-password" : "current-password";
  $("auth-hint").textContent = reg
    ? "You get a user id: friends find you with it, and you log in with it."
    : "Your user id was given to you when you registered.";
  $("auth-error").textContent = "";
}

function showAuth(error = "") {
  state.me = null;
  $("app").hidden = true;
  $("auth").hidden = false;
  $("auth-error").textContent = error;
  $(registering ? "reg-name" : "login-id").focus();
}

function enter(uid, name) {
  state.me = { id: uid, name };
  $("auth").hidden = true;
  $("app").hidden = false;
  $("me-name").textContent = name;
  $("me-id").textContent = `user id ${uid}`;
  paintAvatar($("me-avatar"), name, uid);
  renderSidebar();
  refresh();
}

function reset() {
  state.friends.clear();
  state.groups.clear();
  state.convs.clear();
  state.blocked.clear();
  state.invites = [];
  state.inviteOnly.clear();
  state.groupsAt = 0;
  state.groupPages = 1;
  state.active = null;
  $("conversation").hidden = true;
  $("placeholder").hidden = false;
  $("app").classList.remove("showing-conv");
  renderTitle();
}

async function submitAuth(event) {
  event.preventDefault();
  const password = $("password").value;
  const err = $("auth-error");
  err.textContent = "";
  $("auth-submit").disabled = true;
  try {
    if (!sock.ready) {
      err.textContent = "Waiting for the server…";
      await sock.whenReady();
      err.textContent = "";
    }
    let uid;
    if (registering) {
      const name = $("reg-name").value.trim();
      if (!name || !password) { err.textContent = "Choose a name and a password."; return; }
      const ack = await sock.request({ msgid: Msg.REG, name, password });
      if (ack.errno !== 0) { err.textContent = sentence(ack.errmsg || "That name is taken."); return; }
      uid = Number(ack.id);
    } else {
      uid = Number($("login-id").value.trim());
      if (!Number.isInteger(uid) || uid < 1) { err.textContent = "Your user id is a number."; return; }
    }
    reset();
    const ack = await sock.login(uid, password);
    if (ack.errno !== 0) { err.textContent = sentence(ack.errmsg || "Wrong id or password."); return; }
    $("password").value = "";
    sessionStorage.removeItem(ENDED_KEY);
    if (sock.ticket) {
      sessionStorage.setItem(SESSION_KEY, JSON.stringify({ id: uid, name: ack.name, ticket: sock.ticket }));
    }
    enter(uid, String(ack.name));
    if (registering) toast(`Welcome! Your user id is ${uid}: you log in with it.`, "info");
  } catch {
    err.textContent = "The connection dropped; try again in a moment.";
  } finally {
    $("auth-submit").disabled = false;
  }
}

async function logout() {
  sessionStorage.removeItem(SESSION_KEY);
  try { await sock.logout(); } catch { /* the ticket is dropped anyway */ }
  reset();
  setMode(false);
  showAuth();
}

async function resumeSaved() {
  let saved;
  try { saved = JSON.parse(sessionStorage.getItem(SESSION_KEY) || "null"); } catch { saved = null; }
  if (!saved) {
    let ended;
    try { ended = JSON.parse(sessionStorage.getItem(ENDED_KEY) || "null"); } catch { ended = null; }
    if (ended && ENDED.has(ended.why)) showEnded(ended.why, Number(ended.id) || 0);
    else showAuth();
    return;
  }
  // After a reload the old connection's session may take a moment to end
  // ("already online"): retry a few seconds before asking for the password.
  for (let attempt = 0; attempt < 20; attempt += 1) {
    await sock.whenReady();
    try {
      const ack = await sock.resume(Number(saved.id), String(saved.ticket));
      if (ack.errno === 0) { enter(Number(saved.id), String(ack.name || saved.name)); return; }
      if (![2, 4].includes(ack.errno)) break;
    } catch { /* reconnecting: try again */ }
    await new Promise((r) => setTimeout(r, 300));
  }
  sessionStorage.removeItem(SESSION_KEY);
  showAuth();
}

// -- forms -------------------------------------------------------------------------------

async function ask(doc, okMsgid) {
  try {
    const ack = await sock.request(doc);
    if (ack.msgid !== okMsgid) { toast(sentence(ack.errmsg ?? "refused")); return null; }
    return ack;
  } catch {
    toast("Not connected; try again when the connection is back.");
    return null;
  }
}

function wire() {
  $("toast").addEventListener("click", () => { $("toast").hidden = true; });
  $("messages").addEventListener("scroll", () => { // near the top: the page before
    const c = state.active && state.convs.get(state.active);
    if (c && $("messages").scrollTop < 60) loadHistory(c);
  });
  $("tab-login").addEventListener("click", () => setMode(false));
  $("tab-register").addEventListener("click", () => setMode(true));
  $("auth-form").addEventListener("submit", submitAuth);
  $("logout").addEventListener("click", logout);
  $("add-friend-btn").addEventListener("click", () => {
    $("add-friend").hidden = !$("add-friend").hidden;
    if (!$("add-friend").hidden) $("friend-id").focus();
  });
  $("group-btn").addEventListener("click", () => {
    $("group-forms").hidden = !$("group-forms").hidden;
    if (!$("group-forms").hidden) $("join-id").focus();
  });
  $("add-friend").addEventListener("submit", async (e) => {
    e.preventDefault();
    const id = Number($("friend-id").value.trim());
    if (!Number.isInteger(id) || id < 1) { toast("A user id is a number."); return; }
    const ack = await ask({ msgid: Msg.ADD_FRIEND, friendid: id }, Msg.ADD_FRIEND_ACK);
    if (!ack) return;
    const f = ack.friend;
    state.friends.set(Number(f.id), { id: Number(f.id), name: String(f.name), state: String(f.state) });
    $("friend-id").value = "";
    $("add-friend").hidden = true;
    renderSidebar();
    open(`u:${f.id}`);
  });
  $("join-group").addEventListener("submit", async (e) => {
    e.preventDefault();
    const id = Number($("join-id").value.trim());
    if (!Number.isInteger(id) || id < 1) { toast("A group id is a number."); return; }
    const ack = await ask({ msgid: Msg.ADD_GROUP, groupid: id }, Msg.ADD_GROUP_ACK);
    if (!ack) return;
    $("join-id").value = "";
    $("group-forms").hidden = true;
    await refresh();
    open(conv("g", id).key);
  });
  $("create-group").addEventListener("submit", async (e) => {
    e.preventDefault();
    const groupname = $("group-name").value.trim();
    if (!groupname) { toast("Give the group a name."); return; }
    const groupdesc = $("group-desc").value.trim();
    const ack = await ask({ msgid: Msg.CREATE_GROUP, groupname, groupdesc }, Msg.CREATE_GROUP_ACK);
    if (!ack) return;
    $("group-name").value = "";
    $("group-desc").value = "";
    $("group-forms").hidden = true;
    await refresh();
    open(conv("g", ack.groupid).key);
  });
  $("members-btn").addEventListener("click", () => { $("members").hidden = !$("members").hidden; });
  $("back").addEventListener("click", () => {
    state.active = null;
    $("app").classList.remove("showing-conv");
    renderSidebar();
  });
  $("composer").addEventListener("submit", (e) => { e.preventDefault(); send(); });
  $("text").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); send(); }
  });
  $("text").addEventListener("input", autoGrow);
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden && state.active) open(state.active);
  });
}

// For the console and the browser tests: the connection and what is shown.
window.clusterchat = Object.freeze({ sock, state });

wire();
wireManage();
sock.start();
resumeSaved();
