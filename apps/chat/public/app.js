// moonwire chat page: plain JavaScript, no build step.
// Every piece of user text goes into the page through textContent, never innerHTML.
'use strict';

(function () {
  const NICK_RE = /^[A-Za-z0-9_.-]{1,20}$/;
  const ROOM_RE = /^[A-Za-z0-9_-]{1,32}$/;
  const $ = (id) => document.getElementById(id);

  const ui = {
    status: $('status'), roomTitle: $('room-title'),
    joinForm: $('join-form'), nick: $('nick'), room: $('room'), joinError: $('join-error'), rooms: $('rooms'),
    chat: $('chat'), messages: $('messages'), sendForm: $('send-form'), text: $('text'), send: $('send'),
    sendError: $('send-error'), members: $('members'), memberCount: $('member-count'), leave: $('leave'),
  };

  // Connection state. `server` and `lastId` tell, after a reconnect, which history
  // messages are new and whether the server restarted (ids start again then).
  const chat = { ws: null, nick: null, room: null, wanted: false, attempts: 0, timer: null,
                 server: null, lastId: 0, seen: new Set(), lost: false, members: [] };
  window.chat = chat; // for the console and the browser tests

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }
  const asArray = (x) => (Array.isArray(x) ? x : []); // the server's JSON encodes [] as {}

  function setStatus(state, text) {
    ui.status.dataset.state = state;
    ui.status.textContent = text;
    ui.send.disabled = state !== 'open';
  }

  function showError(p, text) {
    p.textContent = text;
    p.hidden = false;
    clearTimeout(p._t);
    p._t = setTimeout(() => { p.hidden = true; }, 4000);
  }

  function clock(ts) {
    const d = ts ? new Date(ts * 1000) : new Date();
    return d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
  }

  function append(li) {
    const box = ui.messages;
    const atBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 40;
    box.appendChild(li);
    if (atBottom) box.scrollTop = box.scrollHeight;
  }

  function addMessage(m) {
    const key = m.server + ':' + m.id;
    if (chat.seen.has(key)) return;
    chat.seen.add(key);
    if (m.server === chat.server && m.id > chat.lastId) chat.lastId = m.id;
    const li = el('li', 'message' + (m.nick === chat.nick ? ' mine' : ''));
    li.dataset.id = m.id;
    const meta = el('div', 'meta');
    meta.appendChild(el('span', 'nick', m.nick));
    meta.appendChild(el('time', 'time', clock(m.ts)));
    li.appendChild(meta);
    li.appendChild(el('div', 'text', m.text));
    append(li);
  }

  function addNotice(text, kind) {
    append(el('li', 'notice' + (kind ? ' ' + kind : ''), text));
  }

  function setMembers(list) {
    chat.members = asArray(list);
    ui.members.replaceChildren(...chat.members.map((nick) => {
      const li = el('li', nick === chat.nick ? 'me' : '', nick);
      if (nick === chat.nick) li.appendChild(el('span', 'you', ' (you)'));
      return li;
    }));
    ui.memberCount.textContent = String(chat.members.length);
  }

  function onWelcome(m) {
    if (chat.server && m.server !== chat.server) {
      addNotice('The server restarted; messages above are from before.', 'divider');
      chat.lastId = 0;
    } else if (chat.lost) {
      addNotice('Reconnected.', 'ok');
    }
    chat.server = m.server;
    chat.lost = false;
    setMembers(m.members);
    asArray(m.history).forEach(addMessage);
    if (m.limits && m.limits.text) ui.text.maxLength = m.limits.text;
    ui.text.focus();
  }

  function onData(ev) {
    let m;
    try { m = JSON.parse(ev.data); } catch (_) { return; }
    switch (m.type) {
      case 'welcome': onWelcome(m); break;
      case 'message': addMessage(m); break;
      case 'join': addNotice(m.nick + ' joined'); setMembers(m.members); break;
      case 'leave': addNotice(m.nick + ' left'); setMembers(m.members); break;
      case 'error': showError(ui.sendError, m.error); break;
      default: break;
    }
  }

  function connect() {
    clearTimeout(chat.timer);
    const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
    const url = proto + '//' + location.host + '/chat/' + encodeURIComponent(chat.room) +
      '?nick=' + encodeURIComponent(chat.nick);
    setStatus('connecting', chat.attempts ? 'reconnecting…' : 'connecting…');
    const ws = new WebSocket(url);
    chat.ws = ws;
    ws.onopen = () => {
      chat.attempts = 0;
      setStatus('open', 'connected');
    };
    ws.onmessage = onData;
    ws.onclose = (ev) => {
      if (chat.ws !== ws) return;
      chat.ws = null;
      if (!chat.wanted) return;
      if (!chat.lost) addNotice('Connection lost (' + (ev.code || 'no code') + '); reconnecting…', 'warn');
      chat.lost = true;
      // Exponential backoff with jitter: 0.25 s, 0.5 s, 1 s, ... up to 5 s.
      const base = Math.min(5000, 250 * 2 ** chat.attempts);
      const delay = Math.round(base / 2 + Math.random() * base / 2);
      chat.attempts += 1;
      setStatus('waiting', 'reconnecting in ' + (delay / 1000).toFixed(1) + ' s');
      chat.timer = setTimeout(connect, delay);
    };
  }

  function join(nick, room) {
    chat.nick = nick;
    chat.room = room;
    chat.wanted = true;
    chat.attempts = 0;
    chat.lost = false;
    chat.server = null;
    chat.lastId = 0;
    chat.seen.clear();
    ui.messages.replaceChildren();
    setMembers([]);
    try { localStorage.setItem('moonwire-chat', JSON.stringify({ nick, room })); } catch (_) { /* private mode */ }
    history.replaceState(null, '', '?room=' + encodeURIComponent(room));
    document.title = '#' + room + ' · moonwire chat';
    ui.roomTitle.textContent = '#' + room;
    ui.roomTitle.hidden = false;
    ui.joinForm.hidden = true;
    ui.chat.hidden = false;
    connect();
  }

  function leave() {
    chat.wanted = false;
    clearTimeout(chat.timer);
    if (chat.ws) chat.ws.close(1000, 'left');
    chat.ws = null;
    setStatus('idle', 'not connected');
    ui.chat.hidden = true;
    ui.roomTitle.hidden = true;
    ui.joinForm.hidden = false;
    document.title = 'moonwire chat';
    loadRooms();
  }

  async function loadRooms() {
    try {
      const rooms = asArray(await (await fetch('/api/rooms')).json()).filter((r) => r.members > 0);
      if (!rooms.length) { ui.rooms.hidden = true; return; }
      ui.rooms.replaceChildren(el('span', null, 'Active: '), ...rooms.slice(0, 8).map((r) => {
        const b = el('button', 'chip', '#' + r.room + ' · ' + r.members);
        b.type = 'button';
        b.onclick = () => { ui.room.value = r.room; ui.nick.focus(); };
        return b;
      }));
      ui.rooms.hidden = false;
    } catch (_) { ui.rooms.hidden = true; }
  }

  ui.joinForm.addEventListener('submit', (ev) => {
    ev.preventDefault();
    const nick = ui.nick.value.trim();
    const room = ui.room.value.trim();
    if (!NICK_RE.test(nick)) return showError(ui.joinError, "Nickname: 1-20 letters, digits, '_', '.' or '-'.");
    if (!ROOM_RE.test(room)) return showError(ui.joinError, "Room: 1-32 letters, digits, '_' or '-'.");
    ui.joinError.hidden = true;
    join(nick, room);
  });

  ui.sendForm.addEventListener('submit', (ev) => {
    ev.preventDefault();
    const text = ui.text.value.trim();
    if (!text) return;
    if (!chat.ws || chat.ws.readyState !== WebSocket.OPEN) {
      return showError(ui.sendError, 'Not connected; the message was not sent.');
    }
    chat.ws.send(JSON.stringify({ type: 'message', text }));
    ui.text.value = '';
  });

  ui.leave.addEventListener('click', leave);
  // Back online (laptop lid, Wi-Fi): try at once instead of waiting out the backoff.
  window.addEventListener('online', () => { if (chat.wanted && !chat.ws) connect(); });

  // Prefill from ?room=...&nick=... or from the last visit.
  let saved = {};
  try { saved = JSON.parse(localStorage.getItem('moonwire-chat') || '{}') || {}; } catch (_) { /* ignore */ }
  const q = new URLSearchParams(location.search);
  ui.nick.value = q.get('nick') || saved.nick || '';
  ui.room.value = q.get('room') || saved.room || 'lobby';
  (ui.nick.value ? ui.room : ui.nick).focus();
  setStatus('idle', 'not connected');
  loadRooms();
}());
