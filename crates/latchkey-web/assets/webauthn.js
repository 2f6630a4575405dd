// WebAuthn for the hosted pages (DESIGN.md 5.1, 5.7): a form marked data-webauthn="create" or
// "get" carries the server's options (JSON, binary fields base64url) in data-options. On submit
// the script runs navigator.credentials.create() or .get(), puts the browser's
// PublicKeyCredential as JSON (binary fields base64url) into the form's "credential" field and
// submits the form; the server verifies it. Nothing else on the pages needs JavaScript.
(function () {
  'use strict';

  function toBuf(s) {
    var b = atob(String(s).replace(/-/g, '+').replace(/_/g, '/') + '==='.slice((String(s).length + 3) % 4));
    var a = new Uint8Array(b.length);
    for (var i = 0; i < b.length; i++) a[i] = b.charCodeAt(i);
    return a.buffer;
  }

  function toB64u(buf) {
    if (!buf) return null;
    var a = new Uint8Array(buf), s = '';
    for (var i = 0; i < a.length; i++) s += String.fromCharCode(a[i]);
    return btoa(s).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
  }

  function ids(list) {
    (list || []).forEach(function (c) { c.id = toBuf(c.id); });
  }

  function creation(pk) {
    pk.challenge = toBuf(pk.challenge);
    pk.user.id = toBuf(pk.user.id);
    ids(pk.excludeCredentials);
    return pk;
  }

  function request(pk) {
    pk.challenge = toBuf(pk.challenge);
    ids(pk.allowCredentials);
    return pk;
  }

  function asJson(cred) {
    var r = cred.response;
    var out = {
      id: cred.id,
      rawId: toB64u(cred.rawId),
      type: cred.type,
      extensions: cred.getClientExtensionResults ? cred.getClientExtensionResults() : {},
      response: { clientDataJSON: toB64u(r.clientDataJSON) }
    };
    if (r.attestationObject) {
      out.response.attestationObject = toB64u(r.attestationObject);
      if (r.getTransports) out.response.transports = r.getTransports();
    } else {
      out.response.authenticatorData = toB64u(r.authenticatorData);
      out.response.signature = toB64u(r.signature);
      if (r.userHandle) out.response.userHandle = toB64u(r.userHandle);
    }
    return out;
  }

  function say(form, text) {
    var el = form.querySelector('.webauthn-error');
    if (!el) return;
    el.textContent = text;
    el.hidden = false;
  }

  function ceremony(form) {
    var field = form.querySelector('input[name="credential"]');
    var button = form.querySelector('button[type="submit"]');
    if (!window.PublicKeyCredential || !navigator.credentials) {
      say(form, 'This browser does not support passkeys or security keys.');
      return;
    }
    var options;
    try {
      options = JSON.parse(form.getAttribute('data-options')).publicKey;
    } catch (e) {
      say(form, 'The page is incomplete. Reload it and try again.');
      return;
    }
    if (button) button.disabled = true;
    var started = form.getAttribute('data-webauthn') === 'create'
      ? navigator.credentials.create({ publicKey: creation(options) })
      : navigator.credentials.get({ publicKey: request(options) });
    started.then(function (cred) {
      field.value = JSON.stringify(asJson(cred));
      form.submit();
    }, function (err) {
      if (button) button.disabled = false;
      var why = err && err.name === 'NotAllowedError'
        ? 'The passkey request was cancelled or timed out. Press the button to try again.'
        : err && err.name === 'InvalidStateError'
          ? 'This passkey or security key is registered already.'
          : 'The passkey request failed' + (err && err.message ? ': ' + err.message : '.') + ' Press the button to try again.';
      say(form, why);
    });
  }

  var forms = document.querySelectorAll('form[data-webauthn]');
  for (var i = 0; i < forms.length; i++) {
    forms[i].addEventListener('submit', function (ev) {
      var field = ev.target.querySelector('input[name="credential"]');
      if (field && field.value) return;
      ev.preventDefault();
      ceremony(ev.target);
    });
  }
})();
