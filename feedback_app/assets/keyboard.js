// Keyboard ranking on the annotate tab (feedback_app/server.py puts it in the page's head).
// The next rank continues from the ranks given on this page view only (by key or mouse): counting the ranks
// restored from a draft would make the first key press give rank 5 of 4. A new form (another item, or the
// same item shown again) carries a new random key in #progress's data-form attribute; the memory is reset
// when it changes, and on 0 / "Clear ranks".
(() => {
  const visible = (el) => el && el.offsetParent !== null;
  let formKey = null;
  let given = new Map();  // rank group id -> rank given on this view
  const sync = () => {
    const el = document.querySelector('#progress [data-form]');
    const key = el ? el.getAttribute('data-form') : null;
    if (key !== formKey) { formKey = key; given = new Map(); }
  };
  document.addEventListener('click', (e) => {
    const t = e.target;
    if (!t || !t.closest) return;
    if (t.closest('#clear-ranks')) { sync(); given = new Map(); return; }
    const group = t.tagName === 'INPUT' && t.type === 'radio' ? t.closest('[id^="rank-"]') : null;
    if (group) { sync(); given.set(group.id, parseInt(t.value)); }
  }, true);
  document.addEventListener('keydown', (e) => {
    if ((e.ctrlKey || e.metaKey) && e.key === 'Enter') {
      const b = document.querySelector('#submit'); if (b) { e.preventDefault(); b.click(); } return;
    }
    const t = e.target;
    if (t && (t.tagName === 'TEXTAREA' || t.isContentEditable ||
              (t.tagName === 'INPUT' && !['radio', 'checkbox'].includes(t.type)))) return;
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    if (e.code === 'Digit0' || e.code === 'Numpad0') {
      const c = document.querySelector('#clear-ranks'); if (c) { e.preventDefault(); c.click(); } return;
    }
    const m = /^(?:Digit|Numpad)([1-8])$/.exec(e.code); if (!m) return;
    const group = document.querySelector('#rank-' + (parseInt(m[1]) - 1));
    if (!visible(group)) return;
    sync();
    const others = [...given].filter(([id]) => id !== group.id && visible(document.getElementById(id)));
    const top = Math.max(0, ...others.map(([, r]) => r));
    const rank = e.shiftKey ? Math.max(1, top) : top + 1;
    const input = group.querySelector('input[value="' + rank + '"]');
    if (input) { e.preventDefault(); given.set(group.id, rank); input.click(); }
  });
})();
