// The Resend countdown (DESIGN.md 5.7): counts down to the time a new code may be asked for
// and enables the Resend button then. The page works without it (the server renders the
// button disabled with the wait, and enabled again on reload).
(function () {
  var el = document.getElementById('countdown');
  var btn = document.getElementById('resend');
  if (!el) return;
  var until = parseInt(el.getAttribute('data-until') || '0', 10) * 1000;
  function tick() {
    var left = Math.ceil((until - Date.now()) / 1000);
    if (left > 0) {
      el.textContent = 'You can ask for a new code in ' + left + ' seconds.';
      setTimeout(tick, 250);
    } else {
      el.textContent = 'You can ask for a new code now.';
      if (btn) btn.disabled = false;
    }
  }
  tick();
})();
