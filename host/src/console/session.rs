//! Console sessions: the API key, typed once into the sign-in form, is swapped for a
//! random session token in an `HttpOnly`, `SameSite=Strict` cookie (`Secure` when the
//! request came over HTTPS, as a proxy in front says), so that pages never hold the key.
//! Each session has its own CSRF token, which every form of a signed-in page carries.
//!
//! Sessions live in memory: a restart signs everyone out, which is the safe side.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::HeaderMap;

/// Name of the session cookie.
pub const COOKIE: &str = "appsnap_session";

/// How long a session lasts from its sign-in.
pub const TTL: Duration = Duration::from_secs(12 * 3600);

/// Most sessions kept at once: a sign-in beyond it ends the oldest.
const MAX: usize = 1000;

#[derive(Default)]
pub struct Sessions {
    map: Mutex<HashMap<String, Session>>,
}

struct Session {
    expires: Instant,
    csrf: String,
}

/// The CSRF token a request's page puts in its forms: its session's, or (no API key, no
/// sessions) the process's own.
#[derive(Clone, Debug)]
pub struct Csrf {
    pub token: String,
    /// Whether it is a session's (the page then offers to sign out).
    pub session: bool,
}

/// A random token (32 bytes, hex).
pub fn token() -> String {
    crate::archive::hex(&rand::random::<[u8; 32]>())
}

impl Sessions {
    /// A new session: (its cookie's token, its CSRF token).
    pub fn create(&self) -> (String, String) {
        let (id, csrf) = (token(), token());
        let mut map = self.map.lock().unwrap();
        let now = Instant::now();
        map.retain(|_, s| s.expires > now);
        if map.len() >= MAX
            && let Some(oldest) = map
                .iter()
                .min_by_key(|(_, s)| s.expires)
                .map(|(k, _)| k.clone())
        {
            map.remove(&oldest);
        }
        map.insert(
            id.clone(),
            Session {
                expires: now + TTL,
                csrf: csrf.clone(),
            },
        );
        (id, csrf)
    }

    /// The session of a request's cookie, while it lasts.
    pub fn of(&self, headers: &HeaderMap) -> Option<(String, Csrf)> {
        let id = cookie(headers, COOKIE)?;
        let mut map = self.map.lock().unwrap();
        match map.get(id) {
            Some(s) if s.expires > Instant::now() => Some((
                id.to_string(),
                Csrf {
                    token: s.csrf.clone(),
                    session: true,
                },
            )),
            Some(_) => {
                map.remove(id);
                None
            }
            None => None,
        }
    }

    pub fn end(&self, id: &str) {
        self.map.lock().unwrap().remove(id);
    }
}

/// The value of the cookie `name` in a request.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| c.trim().strip_prefix(name)?.strip_prefix('='))
}

/// The `Set-Cookie` value of a session (`id`), or of its removal (`None`).
pub fn set_cookie(id: Option<&str>, headers: &HeaderMap) -> String {
    let secure = headers
        .get("x-forwarded-proto")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"https"));
    let (value, age) = match id {
        Some(id) => (id, TTL.as_secs()),
        None => ("", 0),
    };
    format!(
        "{COOKIE}={value}; Path=/; Max-Age={age}; HttpOnly; SameSite=Strict{}",
        if secure { "; Secure" } else { "" }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_is_found_by_its_cookie_until_it_ends() {
        let sessions = Sessions::default();
        let (id, csrf) = sessions.create();
        let mut headers = HeaderMap::new();
        headers.insert("cookie", format!("x=1; {COOKIE}={id}").parse().unwrap());
        let (found, Csrf { token, .. }) = sessions.of(&headers).unwrap();
        assert_eq!(
            (found.as_str(), token.as_str()),
            (id.as_str(), csrf.as_str())
        );
        sessions.end(&id);
        assert!(sessions.of(&headers).is_none());
        headers.insert("cookie", format!("{COOKIE}=forged").parse().unwrap());
        assert!(sessions.of(&headers).is_none());
        let set = set_cookie(Some("abc"), &HeaderMap::new());
        assert!(
            set.contains("HttpOnly") && set.contains("SameSite=Strict"),
            "{set}"
        );
        assert!(!set.contains("Secure"));
    }

    /// A session past its `TTL` is no session: its cookie leads to the sign-in form
    /// again (the console's layer sends there whatever `of` does not find), and it is
    /// forgotten. Its end is moved to now rather than waited for.
    #[test]
    fn an_expired_session_is_no_session_and_is_forgotten() {
        let sessions = Sessions::default();
        let (id, _) = sessions.create();
        let mut headers = HeaderMap::new();
        headers.insert("cookie", format!("{COOKIE}={id}").parse().unwrap());
        assert!(sessions.of(&headers).is_some());
        sessions.map.lock().unwrap().get_mut(&id).unwrap().expires = Instant::now();
        assert!(sessions.of(&headers).is_none());
        assert!(!sessions.map.lock().unwrap().contains_key(&id));
        let set = set_cookie(Some(&id), &HeaderMap::new());
        assert!(set.contains(&format!("Max-Age={}", TTL.as_secs())), "{set}");
    }
}
