//! The messages Latchkey sends, as multipart text + HTML: an emailed sign-in code, an admin's
//! reset link, and the notices of DESIGN.md 5.6 (their wording in the askama templates of
//! `templates/`). Rendering is pure (tested without a server); names are HTML-escaped in the
//! HTML part and stripped of control characters everywhere.
//!
//! A notice carries no code, token or link that grants access: its only link is the admins'
//! review page under `LATCHKEY_PUBLIC_URL/ui/`, its times are to the second, and a run of
//! exactly six digits in a user-supplied value (a name, a user agent) is split, so that no
//! notice can be taken for a code mail.
//!
//! An OTP message holds exactly one run of six digits, the code: nothing else in it (dates,
//! ids, MIME boundaries, `Message-ID`) is made of six digits in a row — the `Message-ID` and
//! the MIME boundary are spelled in letters only — so a reader (or a test) can pick the code
//! out with `\b\d{6}\b`.

use askama::Template;
use chrono::Duration;
use latchkey_core::DeliveryId;
use latchkey_tenant::outbox::{NoticeEvent, NoticeMail};
use lettre::Message;
use lettre::message::{Mailbox, MultiPart, SinglePart};

/// The rendered text of one message.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Rendered {
    /// The `Subject` header.
    pub subject: String,
    /// The `text/plain` part.
    pub text: String,
    /// The `text/html` part.
    pub html: String,
}

impl std::fmt::Debug for Rendered {
    // The bodies hold the code or the link: never print them.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rendered").field("subject", &self.subject).finish_non_exhaustive()
    }
}

/// The tenant name as shown in text and headers: control characters (line breaks included)
/// become spaces, runs of spaces collapse, and an empty name reads "Latchkey".
pub(crate) fn display_name(tenant: &str) -> String {
    let cleaned: String = tenant.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    let words: Vec<&str> = cleaned.split_whitespace().collect();
    if words.is_empty() { "Latchkey".to_owned() } else { words.join(" ") }
}

/// A user-supplied value as a notice shows it: control and invisible formatting characters
/// (bidi overrides, zero-width) become spaces, runs of spaces collapse, and a run of exactly
/// six digits is split in two (`123 456`) so that it cannot pass for a code.
pub(crate) fn shown(value: &str) -> String {
    let invisible = |c: char| {
        c.is_control()
            || matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2060}'..='\u{2069}' | '\u{feff}')
    };
    let cleaned: String = value.chars().map(|c| if invisible(c) { ' ' } else { c }).collect();
    let joined = cleaned.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut out = String::with_capacity(joined.len() + 4);
    let chars: Vec<char> = joined.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let run = chars[i..].iter().take_while(|c| c.is_ascii_digit()).count();
        if run == 0 {
            out.push(chars[i]);
            i += 1;
            continue;
        }
        let digits: String = chars[i..i + run].iter().collect();
        if run == 6 {
            out.push_str(&digits[..3]);
            out.push(' ');
            out.push_str(&digits[3..]);
        } else {
            out.push_str(&digits);
        }
        i += run;
    }
    out
}

/// "5 minutes", "1 minute", "1 hour", "2 hours" (rounded up to the minute; never "0").
pub(crate) fn validity(d: Duration) -> String {
    let secs = d.num_seconds().max(1);
    if secs >= 3600 && secs % 3600 == 0 {
        let h = secs / 3600;
        return if h == 1 { "1 hour".to_owned() } else { format!("{h} hours") };
    }
    let m = (secs + 59) / 60;
    if m == 1 { "1 minute".to_owned() } else { format!("{m} minutes") }
}

/// Percent-encodes everything but RFC 3986 unreserved characters (a base64url token passes
/// through unchanged).
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The reset page link: `<public_url>/reset-otp?token=<token>`.
pub(crate) fn reset_url(public_url: &str, token: &str) -> String {
    format!("{}/reset-otp?token={}", public_url.trim_end_matches('/'), percent_encode(token))
}

const FOOTER_TEXT: &str = "This message was sent by Latchkey. Please do not reply to it.";

/// Line width the bodies are wrapped to: below the 76 characters past which a body can no
/// longer travel as plain `7bit`, so an all-ASCII message stays readable in its raw form.
const WIDTH: usize = 72;

/// Wraps every line of `text` at spaces to [`WIDTH`] characters; a word longer than that (a
/// link) stays whole on its own line.
fn wrap(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 16);
    for line in text.split('\n') {
        let mut len = 0;
        for (i, word) in line.split(' ').enumerate() {
            let w = word.chars().count();
            if i > 0 {
                if len + 1 + w > WIDTH && len > 0 {
                    out.push('\n');
                    len = 0;
                } else {
                    out.push(' ');
                    len += 1;
                }
            }
            out.push_str(word);
            len += w;
        }
        out.push('\n');
    }
    out.pop();
    out
}

fn html_page(title: &str, body: &str) -> String {
    wrap(&format!(
        "<!DOCTYPE html>\n<html>\n<head>\n<meta charset=\"utf-8\">\n<title>{title}</title>\n</head>\n\
         <body style=\"font-family: sans-serif; line-height: 1.5\">\n{body}\n\
         <p style=\"color: #777\">{FOOTER_TEXT}</p>\n</body>\n</html>\n"
    ))
}

/// The message carrying an emailed sign-in code.
pub(crate) fn otp(tenant: &str, code: &str, valid_for: Duration) -> Rendered {
    let name = display_name(tenant);
    let valid = validity(valid_for);
    let subject = format!("Your {name} sign-in code");
    let text = wrap(&format!(
        "Hello,\n\n\
         Your sign-in code for {name} is:\n\n\
         {code}\n\n\
         Enter it on the sign-in page. It is valid for {valid} and can be used once.\n\n\
         If you did not try to sign in, you can ignore this message: without the code nobody \
         can finish signing in as you.\n\n\
         {FOOTER_TEXT}\n"
    ));
    let name_html = html_escape::encode_text(&name);
    let code_html = html_escape::encode_text(code);
    let body = format!(
        "<p>Hello,</p>\n\
         <p>Your sign-in code for <strong>{name_html}</strong> is:</p>\n\
         <p style=\"font-size: 2em; font-weight: bold; letter-spacing: 0.2em\">\n{code_html}\n</p>\n\
         <p>Enter it on the sign-in page. It is valid for {valid} and can be used once.</p>\n\
         <p>If you did not try to sign in, you can ignore this message: without the code nobody \
         can finish signing in as you.</p>"
    );
    Rendered { html: html_page(&html_escape::encode_text(&subject), &body), subject, text }
}

/// The message carrying an admin's reset link (`link` from [`reset_url`]).
pub(crate) fn reset_link(tenant: &str, link: &str, valid_for: Duration) -> Rendered {
    let name = display_name(tenant);
    let valid = validity(valid_for);
    let subject = format!("Reset your {name} two-factor sign-in");
    let text = wrap(&format!(
        "Hello,\n\n\
         Someone, hopefully you, asked to reset the two-factor sign-in of your {name} \
         administrator account.\n\n\
         Open this link to reset it:\n\n\
         {link}\n\n\
         The link is valid for {valid} and works once. Resetting removes your authenticator \
         and email sign-in methods and signs you out everywhere; you will set up two-factor \
         sign-in again the next time you sign in.\n\n\
         If you did not ask for this, ignore this message: nothing changes unless the link \
         is used.\n\n\
         {FOOTER_TEXT}\n"
    ));
    let name_html = html_escape::encode_text(&name);
    let href = html_escape::encode_double_quoted_attribute(link);
    let link_text = html_escape::encode_text(link);
    let body = format!(
        "<p>Hello,</p>\n\
         <p>Someone, hopefully you, asked to reset the two-factor sign-in of your \
         <strong>{name_html}</strong> administrator account.</p>\n\
         <p><a\nhref=\"{href}\">Reset two-factor sign-in</a></p>\n\
         <p>Or copy this address into your browser:<br>\n{link_text}\n</p>\n\
         <p>The link is valid for {valid} and works once. Resetting removes your authenticator \
         and email sign-in methods and signs you out everywhere; you will set up two-factor \
         sign-in again the next time you sign in.</p>\n\
         <p>If you did not ask for this, ignore this message: nothing changes unless the link \
         is used.</p>"
    );
    Rendered { html: html_page(&html_escape::encode_text(&subject), &body), subject, text }
}

/// What the notice templates see: every value already cleaned ([`shown`]).
pub(crate) struct NoticeView {
    subject: String,
    kind: &'static str,
    tenant: String,
    name: String,
    when: String,
    ip: String,
    user_agent: String,
    method: &'static str,
    factor: String,
    count: u32,
    remaining: u32,
    new_email: String,
    requester_name: String,
    requester_email: String,
    requester_role: &'static str,
    review_url: String,
}

#[derive(Template)]
#[template(path = "notice_subject.txt")]
struct NoticeSubject<'a> {
    v: &'a NoticeView,
}

#[derive(Template)]
#[template(path = "notice.txt")]
struct NoticeText<'a> {
    v: &'a NoticeView,
}

#[derive(Template)]
#[template(path = "notice.html")]
struct NoticeHtml<'a> {
    v: &'a NoticeView,
}

/// How a method reads in a notice.
fn method_label(method: latchkey_core::Method) -> &'static str {
    match method.as_str() {
        "authenticator" => "authenticator app",
        "email" => "email codes",
        "webauthn" => "passkey or security key",
        _ => "second factor",
    }
}

impl NoticeView {
    fn of(n: &NoticeMail) -> Self {
        let mut v = NoticeView {
            subject: String::new(),
            kind: "",
            tenant: shown(&display_name(&n.tenant_name)),
            name: shown(&n.recipient_name),
            // To the second, never a fraction (DESIGN.md 5.6).
            when: n.at.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
            ip: n.ip.as_deref().map(shown).unwrap_or_default(),
            user_agent: n.user_agent.as_deref().map(shown).unwrap_or_default(),
            method: "",
            factor: String::new(),
            count: 0,
            remaining: 0,
            new_email: String::new(),
            requester_name: String::new(),
            requester_email: String::new(),
            requester_role: "",
            review_url: String::new(),
        };
        v.kind = match &n.what {
            NoticeEvent::MethodEnrolled { method } => {
                v.method = method_label(*method);
                "method_enrolled"
            }
            NoticeEvent::FactorRemoved { factor } => {
                v.factor = shown(factor);
                "factor_removed"
            }
            NoticeEvent::RecoveryCodesGenerated { count } => {
                v.count = *count;
                "recovery_codes_generated"
            }
            NoticeEvent::RecoveryCodeUsed { remaining } => {
                v.remaining = *remaining;
                "recovery_code_used"
            }
            NoticeEvent::TrustedDeviceCreated => "trusted_device_created",
            NoticeEvent::RecoveryApproved => "recovery_approved",
            NoticeEvent::RecoveryDismissed => "recovery_dismissed",
            NoticeEvent::ResetLinkUsed => "reset_link_used",
            NoticeEvent::PasswordChanged => "password_changed",
            NoticeEvent::EmailChanged { new_email_masked } => {
                v.new_email = shown(new_email_masked);
                "email_changed"
            }
            NoticeEvent::RecoveryRequested { requester_name, requester_email, requester_role, review_url } => {
                v.requester_name = shown(requester_name);
                v.requester_email = shown(requester_email);
                v.requester_role = requester_role.as_str();
                v.review_url = review_url.clone();
                "recovery_requested"
            }
        };
        v
    }
}

/// The message of a notice.
///
/// Errors: a template that fails to render (a bug: the templates are checked at compile time).
pub(crate) fn notice(n: &NoticeMail) -> Result<Rendered, askama::Error> {
    let mut view = NoticeView::of(n);
    view.subject = NoticeSubject { v: &view }.render()?.trim().to_owned();
    let text = wrap(NoticeText { v: &view }.render()?.trim_end());
    let html = wrap(NoticeHtml { v: &view }.render()?.trim_end());
    Ok(Rendered { subject: view.subject, text: text + "\n", html: html + "\n" })
}

/// `id` spelled with letters only (each hex digit `0-f` becomes `a-p`), so neither the
/// `Message-ID` nor the MIME boundary contains digits.
fn letters(id: DeliveryId) -> String {
    id.0.simple()
        .to_string()
        .bytes()
        .map(|b| match b {
            b'0'..=b'9' => char::from(b'a' + (b - b'0')),
            b'a'..=b'f' => char::from(b'k' + (b - b'a')),
            other => char::from(other),
        })
        .collect()
}

/// Why a message could not be built: the recipient or sender address is invalid, or lettre
/// refused the message. Permanent: retrying cannot help.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BuildError {
    /// The recipient address does not parse.
    #[error("invalid recipient address")]
    Recipient,
    /// lettre refused to build the message.
    #[error("cannot build the message: {0}")]
    Message(#[from] lettre::error::Error),
}

/// The complete message of `delivery` from `from` to `to`.
pub(crate) fn build(
    from: &Mailbox,
    to: &str,
    delivery: DeliveryId,
    rendered: &Rendered,
) -> Result<Message, BuildError> {
    // The same parser that accepted the address (DESIGN.md "Email addresses").
    let to = latchkey_core::email::mailbox(to.trim()).ok_or(BuildError::Recipient)?;
    let id = letters(delivery);
    let body = MultiPart::alternative()
        .boundary(format!("latchkey-alt-{id}"))
        .singlepart(SinglePart::plain(rendered.text.clone()))
        .singlepart(SinglePart::html(rendered.html.clone()));
    Ok(Message::builder()
        .from(from.clone())
        .to(to)
        .subject(rendered.subject.clone())
        .message_id(Some(format!("<{id}@latchkey>")))
        .multipart(body)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::mime::six_digit_runs;

    #[test]
    fn validity_reads_naturally() {
        assert_eq!(validity(Duration::seconds(300)), "5 minutes");
        assert_eq!(validity(Duration::seconds(299)), "5 minutes");
        assert_eq!(validity(Duration::seconds(60)), "1 minute");
        assert_eq!(validity(Duration::seconds(0)), "1 minute");
        assert_eq!(validity(Duration::seconds(3600)), "1 hour");
        assert_eq!(validity(Duration::seconds(7200)), "2 hours");
        assert_eq!(validity(Duration::seconds(5400)), "90 minutes");
    }

    #[test]
    fn otp_message_holds_the_code_and_no_other_six_digit_number() {
        let r = otp("Acme", "012345", Duration::seconds(300));
        assert_eq!(r.subject, "Your Acme sign-in code");
        for part in [&r.text, &r.html] {
            assert_eq!(six_digit_runs(part), vec!["012345".to_owned()], "{part}");
            assert!(part.contains("valid for 5 minutes"));
            assert!(part.contains("\n012345\n"), "the code on a line of its own");
        }
        let from: Mailbox = "Latchkey <no-reply@localhost>".parse().unwrap();
        let m = build(&from, "user@example.com", DeliveryId::new(), &r).unwrap();
        let raw = String::from_utf8(m.formatted()).unwrap();
        // Headers, boundaries and both parts: still the code only (date and time carry no
        // six-digit run either).
        assert!(six_digit_runs(&raw).iter().all(|c| c == "012345"), "{raw}");
        // An all-ASCII message travels as plain 7bit: the code is readable in the raw message.
        assert!(!raw.contains("quoted-printable") && !raw.contains("base64"), "{raw}");
        assert!(!format!("{r:?}").contains("012345"));
    }

    #[test]
    fn tenant_names_are_escaped_in_html_and_cleaned_in_text() {
        let hostile = "<script>alert(\"x\")</script> & Co\r\nBcc: victim@example.com";
        let r = otp(hostile, "123456", Duration::seconds(300));
        assert!(!r.html.contains("<script>"));
        assert!(r.html.contains("&lt;script&gt;alert(\"x\")&lt;/script&gt; &amp; Co"));
        assert!(!r.subject.contains('\n') && !r.subject.contains('\r'));
        assert!(!r.text.contains("\r\nBcc"));
        let from: Mailbox = "Latchkey <no-reply@localhost>".parse().unwrap();
        let m = build(&from, "user@example.com", DeliveryId::new(), &r).unwrap();
        let raw = String::from_utf8(m.formatted()).unwrap();
        assert!(!raw.contains("\r\nBcc:"), "no header injection: {raw}");
        let r = reset_link(hostile, "http://x/reset-otp?token=abc", Duration::seconds(3600));
        assert!(!r.html.contains("<script>"));
        assert_eq!(display_name(" \n "), "Latchkey");
    }

    #[test]
    fn reset_link_format() {
        assert_eq!(reset_url("https://auth.example.com/", "Ab-_9"), "https://auth.example.com/reset-otp?token=Ab-_9");
        assert_eq!(reset_url("http://h", "a b+/="), "http://h/reset-otp?token=a%20b%2B%2F%3D");
        let link = reset_url("http://h:8080", "tok_EN-123");
        let r = reset_link("Acme", &link, Duration::seconds(3600));
        assert!(r.text.contains("\nhttp://h:8080/reset-otp?token=tok_EN-123\n"));
        assert!(r.html.contains("\nhttp://h:8080/reset-otp?token=tok_EN-123\n"));
        assert!(r.html.contains("href=\"http://h:8080/reset-otp?token=tok_EN-123\""));
        assert!(r.text.contains("valid for 1 hour"));
    }

    #[test]
    fn bad_recipient_is_a_build_error() {
        let from: Mailbox = "Latchkey <no-reply@localhost>".parse().unwrap();
        let r = otp("Acme", "123456", Duration::seconds(300));
        assert!(matches!(build(&from, "not an address", DeliveryId::new(), &r), Err(BuildError::Recipient)));
    }

    #[test]
    fn wrapping_keeps_words_and_long_links_whole() {
        let long = format!("http://example.com/reset-otp?token={}", "x".repeat(60));
        let text = format!("{} {long} end\n\nshort", "word ".repeat(30).trim_end());
        let wrapped = wrap(&text);
        assert_eq!(
            wrapped.replace('\n', " ").split_whitespace().collect::<Vec<_>>(),
            text.split_whitespace().collect::<Vec<_>>()
        );
        assert!(wrapped.lines().all(|l| l.chars().count() <= WIDTH || l == long), "{wrapped}");
        assert!(wrapped.contains(&format!("\n{long}\n")));
        assert!(wrapped.ends_with("\n\nshort"));
    }

    fn sample(what: NoticeEvent) -> NoticeMail {
        NoticeMail {
            to: "old@example.com".into(),
            recipient_name: "Grace Hopper".into(),
            tenant_name: "Acme Support".into(),
            tenant_slug: "acme".into(),
            at: chrono::DateTime::parse_from_rfc3339("2026-12-01T20:31:05.123456Z")
                .unwrap()
                .with_timezone(&chrono::Utc),
            ip: Some("203.0.113.9".into()),
            user_agent: Some("Probe/123456 (X11)".into()),
            what,
        }
    }

    fn every_event() -> Vec<NoticeEvent> {
        vec![
            NoticeEvent::MethodEnrolled { method: latchkey_core::Method::Authenticator },
            NoticeEvent::FactorRemoved { factor: "email".into() },
            NoticeEvent::RecoveryCodesGenerated { count: 10 },
            NoticeEvent::RecoveryCodeUsed { remaining: 9 },
            NoticeEvent::TrustedDeviceCreated,
            NoticeEvent::RecoveryApproved,
            NoticeEvent::RecoveryDismissed,
            NoticeEvent::ResetLinkUsed,
            NoticeEvent::PasswordChanged,
            NoticeEvent::EmailChanged { new_email_masked: "n***@example.com".into() },
            NoticeEvent::RecoveryRequested {
                requester_name: "Alan Agent".into(),
                requester_email: "alan@example.com".into(),
                requester_role: latchkey_core::Role::Agent,
                review_url: "https://auth.example.com/ui/acme/agents?tab=requested".into(),
            },
        ]
    }

    /// Every URL-looking token of `text`.
    fn urls(text: &str) -> Vec<&str> {
        text.split(|c: char| c.is_whitespace() || c == '"' || c == '<' || c == '>')
            .filter(|w| w.starts_with("http://") || w.starts_with("https://"))
            .collect()
    }

    #[test]
    fn every_notice_renders_as_text_and_html_without_a_code_or_a_foreign_link() {
        let from: Mailbox = "Latchkey <no-reply@localhost>".parse().unwrap();
        let mut subjects = std::collections::HashSet::new();
        for what in every_event() {
            let n = sample(what.clone());
            let r = notice(&n).unwrap();
            assert!(r.subject.starts_with("Acme Support: "), "{what:?}: {}", r.subject);
            assert!(subjects.insert(r.subject.clone()), "each notice has its own subject: {}", r.subject);
            for part in [&r.text, &r.html] {
                assert!(six_digit_runs(part).is_empty(), "{what:?}: {part}");
                assert!(part.contains("2026-12-01 20:31:05 UTC"), "to the second, no fraction: {part}");
                assert!(part.contains("203.0.113.9") && part.contains("Probe/123 456 (X11)"), "{part}");
                assert!(part.contains("Grace Hopper"), "{part}");
                assert!(!part.contains("token") && !part.contains("{{") && !part.contains("{%"), "{part}");
                for u in urls(part) {
                    assert!(u.starts_with("https://auth.example.com/ui/acme/agents?tab=requested"), "{what:?}: {u}");
                }
            }
            assert!(r.html.starts_with("<!DOCTYPE html>") && r.html.contains("lang=\"en\""));
            let m = build(&from, &n.to, DeliveryId::new(), &r).unwrap();
            let raw = String::from_utf8(m.formatted()).unwrap();
            assert!(six_digit_runs(&raw).is_empty(), "headers and boundaries too: {raw}");
        }
        let r = notice(&sample(every_event().pop().unwrap())).unwrap();
        for part in [&r.text, &r.html] {
            assert!(part.contains("Alan Agent") && part.contains("alan@example.com") && part.contains("agent"));
            assert!(part.contains("https://auth.example.com/ui/acme/agents?tab=requested"), "{part}");
        }
        assert!(r.html.contains("href=\"https://auth.example.com/ui/acme/agents?tab=requested\""));
        assert!(r.subject.contains("Alan Agent"));
        let r = notice(&sample(NoticeEvent::EmailChanged { new_email_masked: "n***@example.com".into() })).unwrap();
        assert!(r.text.contains("n***@example.com"));
    }

    #[test]
    fn notices_escape_names_and_keep_line_breaks_out_of_headers() {
        let mut n = sample(NoticeEvent::RecoveryRequested {
            requester_name: "<script>alert(1)</script>\r\nBcc: x@evil.test".into(),
            requester_email: "a\"b@example.com".into(),
            requester_role: latchkey_core::Role::Supervisor,
            review_url: "https://auth.example.com/ui/acme/agents?tab=requested".into(),
        });
        n.tenant_name = "Evil & <b>Co</b>\r\nX-Injected: yes".into();
        n.user_agent = Some("UA \u{202e}reversed\u{200b} 654321".into());
        let r = notice(&n).unwrap();
        assert!(!r.subject.contains('\n') && !r.subject.contains('\r'), "{}", r.subject);
        assert!(!r.html.contains("<script>") && !r.html.contains("<b>Co"), "{}", r.html);
        let decoded = html_escape::decode_html_entities(&r.html);
        assert!(decoded.contains("<script>alert(1)</script>") && decoded.contains("Evil & <b>Co</b>"), "{decoded}");
        assert!(r.text.contains("<script>alert(1)</script> Bcc: x@evil.test"), "text is plain: {}", r.text);
        assert!(r.text.contains("UA reversed 654 321"), "{}", r.text);
        let from: Mailbox = "Latchkey <no-reply@localhost>".parse().unwrap();
        let raw = String::from_utf8(build(&from, &n.to, DeliveryId::new(), &r).unwrap().formatted()).unwrap();
        assert!(!raw.contains("\r\nBcc:") && !raw.contains("\r\nX-Injected:"), "{raw}");
    }

    #[test]
    fn shown_values_split_code_like_runs_only() {
        assert_eq!(shown("a 123456 b"), "a 123 456 b");
        assert_eq!(shown("x123456y"), "x123 456y");
        assert_eq!(shown("12345 1234567"), "12345 1234567");
        assert_eq!(shown(" two\n  lines\t"), "two lines");
    }

    #[test]
    fn letters_have_no_digits() {
        let l = letters(DeliveryId::new());
        assert_eq!(l.len(), 32);
        assert!(l.bytes().all(|b| b.is_ascii_lowercase()));
    }
}
