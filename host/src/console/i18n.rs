//! The console's languages: every string in English and Simplified Chinese.
//!
//! The strings are one struct per language, so a string missing in one of them does not
//! compile. The language is the `?lang=` of a request (kept in a cookie), else the
//! cookie, else the first of the browser's `Accept-Language` that the console speaks.

use axum::http::HeaderMap;

/// A language the console speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    En,
    Zh,
}

/// Name of the cookie that keeps a language chosen with `?lang=`.
pub const COOKIE: &str = "appsnap_lang";

impl Lang {
    /// `en` or `zh`, as in `?lang=` and the cookie.
    pub fn code(self) -> &'static str {
        match self {
            Lang::En => "en",
            Lang::Zh => "zh",
        }
    }

    /// The value of `<html lang>`.
    pub fn html(self) -> &'static str {
        match self {
            Lang::En => "en",
            Lang::Zh => "zh-CN",
        }
    }

    pub fn parse(code: &str) -> Option<Lang> {
        match code.trim().to_ascii_lowercase().as_str() {
            "en" => Some(Lang::En),
            "zh" => Some(Lang::Zh),
            _ => None,
        }
    }

    /// The language of a request: `chosen` (its `?lang=`), else the cookie, else the
    /// browser's preferences in their order of quality, else English.
    pub fn of(chosen: Option<&str>, headers: &HeaderMap) -> Lang {
        if let Some(lang) = chosen.and_then(Lang::parse) {
            return lang;
        }
        if let Some(lang) = super::session::cookie(headers, COOKIE).and_then(Lang::parse) {
            return lang;
        }
        let accept = headers
            .get(axum::http::header::ACCEPT_LANGUAGE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        let mut ranked: Vec<(f32, Lang)> = accept
            .split(',')
            .filter_map(|part| {
                let mut it = part.split(';');
                let tag = it.next()?.trim().to_ascii_lowercase();
                let q = it
                    .find_map(|p| p.trim().strip_prefix("q=")?.parse::<f32>().ok())
                    .unwrap_or(1.0);
                let lang = match tag.split('-').next()? {
                    "zh" => Lang::Zh,
                    "en" => Lang::En,
                    _ => return None,
                };
                Some((q, lang))
            })
            .collect();
        ranked.sort_by(|a, b| b.0.total_cmp(&a.0));
        ranked.first().map_or(Lang::En, |r| r.1)
    }

    pub fn strings(self) -> &'static Strings {
        match self {
            Lang::En => &EN,
            Lang::Zh => &ZH,
        }
    }
}

/// Every string the console shows.
pub struct Strings {
    pub product: &'static str,
    pub skip_to_content: &'static str,
    pub nav_apps: &'static str,
    pub language: &'static str,
    pub apps_title: &'static str,
    pub apps_intro: &'static str,
    pub col_app: &'static str,
    pub col_docker: &'static str,
    pub col_snapshots: &'static str,
    pub col_last: &'static str,
    pub col_size: &'static str,
    pub running: &'static str,
    pub not_running: &'static str,
    pub docker_unreachable: &'static str,
    pub never: &'static str,
    pub no_apps: &'static str,
    pub app_title: &'static str,
    pub snapshots_title: &'static str,
    pub col_created: &'static str,
    pub col_origin: &'static str,
    pub col_note: &'static str,
    pub col_pinned: &'static str,
    pub col_locations: &'static str,
    pub col_id: &'static str,
    pub pinned: &'static str,
    pub no_snapshots: &'static str,
    pub back_to_apps: &'static str,
    pub not_found_title: &'static str,
    pub not_found_text: &'static str,
    pub sign_in_title: &'static str,
    pub sign_in_text: &'static str,
    pub sign_in_key: &'static str,
    pub sign_in_button: &'static str,
    pub sign_in_wrong: &'static str,
    pub sign_out: &'static str,
    pub backup_now: &'static str,
    pub job_title: &'static str,
    pub job_running: &'static str,
    pub job_succeeded: &'static str,
    pub job_failed: &'static str,
    pub job_step: &'static str,
    pub job_progress: &'static str,
    pub job_to_app: &'static str,
    pub refresh: &'static str,
    pub action_refused: &'static str,
    pub col_actions: &'static str,
    pub pin: &'static str,
    pub unpin: &'static str,
    pub save_note: &'static str,
    pub note_of: &'static str,
    pub delete: &'static str,
    pub delete_title: &'static str,
    pub delete_lead: &'static str,
    pub delete_copies_stay: &'static str,
    pub delete_pinned: &'static str,
    pub cancel: &'static str,
    pub times_in_utc: &'static str,
}

pub static EN: Strings = Strings {
    product: "appsnap",
    skip_to_content: "Skip to content",
    nav_apps: "Apps",
    language: "Language",
    apps_title: "Apps",
    apps_intro: "Every app Docker runs, and every app with snapshots on this server.",
    col_app: "App",
    col_docker: "In Docker",
    col_snapshots: "Snapshots",
    col_last: "Last snapshot",
    col_size: "Size on disk",
    running: "running",
    not_running: "not running",
    docker_unreachable: "Docker cannot be reached: apps without snapshots are not shown.",
    never: "never",
    no_apps: "No apps yet: Docker runs no compose project and no snapshot is stored.",
    app_title: "App",
    snapshots_title: "Snapshots, newest first",
    col_created: "Taken",
    col_origin: "Origin",
    col_note: "Note",
    col_pinned: "Pinned",
    col_locations: "Where",
    col_id: "Snapshot",
    pinned: "pinned",
    no_snapshots: "No snapshot of this app yet.",
    back_to_apps: "All apps",
    not_found_title: "Not found",
    not_found_text: "There is nothing here.",
    sign_in_title: "Sign in",
    sign_in_text: "An API key protects this server: sign in with it to use the console.",
    sign_in_key: "API key",
    sign_in_button: "Sign in",
    sign_in_wrong: "That is not this server's API key.",
    sign_out: "Sign out",
    backup_now: "Back up now",
    job_title: "Job",
    job_running: "Running",
    job_succeeded: "Done",
    job_failed: "Failed",
    job_step: "Step",
    job_progress: "Progress",
    job_to_app: "The app's snapshots",
    refresh: "Refresh",
    action_refused: "Not done",
    col_actions: "Actions",
    pin: "Pin",
    unpin: "Unpin",
    save_note: "Save note",
    note_of: "Note of snapshot",
    delete: "Delete",
    delete_title: "Delete this snapshot?",
    delete_lead: "This deletes the archive of this snapshot from this server and frees its space:",
    delete_copies_stay: "Copies in repositories stay (delete them through the API with location).",
    delete_pinned: "It is pinned: a pin keeps it from policies, not from you.",
    cancel: "Cancel",
    times_in_utc: "Times are UTC unless your browser shows them in its own time zone.",
};

pub static ZH: Strings = Strings {
    product: "appsnap",
    skip_to_content: "跳到正文",
    nav_apps: "应用",
    language: "语言",
    apps_title: "应用",
    apps_intro: "Docker 运行的所有应用，以及本服务器上有快照的所有应用。",
    col_app: "应用",
    col_docker: "Docker 中",
    col_snapshots: "快照",
    col_last: "最近快照",
    col_size: "占用空间",
    running: "运行中",
    not_running: "未运行",
    docker_unreachable: "无法连接 Docker：没有快照的应用未显示。",
    never: "从未",
    no_apps: "还没有应用：Docker 没有运行任何 compose 项目，也没有保存任何快照。",
    app_title: "应用",
    snapshots_title: "快照（最新在前）",
    col_created: "时间",
    col_origin: "来源",
    col_note: "备注",
    col_pinned: "已固定",
    col_locations: "位置",
    col_id: "快照",
    pinned: "已固定",
    no_snapshots: "此应用还没有快照。",
    back_to_apps: "全部应用",
    not_found_title: "未找到",
    not_found_text: "这里什么都没有。",
    sign_in_title: "登录",
    sign_in_text: "此服务器受 API 密钥保护：请用密钥登录后使用控制台。",
    sign_in_key: "API 密钥",
    sign_in_button: "登录",
    sign_in_wrong: "这不是本服务器的 API 密钥。",
    sign_out: "退出登录",
    backup_now: "立即备份",
    job_title: "任务",
    job_running: "进行中",
    job_succeeded: "已完成",
    job_failed: "失败",
    job_step: "步骤",
    job_progress: "进度",
    job_to_app: "该应用的快照",
    refresh: "刷新",
    action_refused: "未执行",
    col_actions: "操作",
    pin: "固定",
    unpin: "取消固定",
    save_note: "保存备注",
    note_of: "快照备注",
    delete: "删除",
    delete_title: "删除此快照？",
    delete_lead: "这会从本服务器删除此快照的归档并释放空间：",
    delete_copies_stay: "存储库中的副本会保留（可通过 API 的 location 参数删除）。",
    delete_pinned: "它已固定：固定只防止策略删除，不防止您删除。",
    cancel: "取消",
    times_in_utc: "时间为 UTC，浏览器会尽量以本地时区显示。",
};

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(accept: &str, cookie: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("accept-language", accept.parse().unwrap());
        if let Some(c) = cookie {
            h.insert("cookie", c.parse().unwrap());
        }
        h
    }

    #[test]
    fn the_language_is_the_choice_then_the_cookie_then_the_browsers_first_known_one() {
        assert_eq!(
            Lang::of(None, &headers("zh-CN,zh;q=0.9,en;q=0.8", None)),
            Lang::Zh
        );
        assert_eq!(
            Lang::of(None, &headers("fr,en;q=0.5,zh;q=0.4", None)),
            Lang::En
        );
        assert_eq!(
            Lang::of(None, &headers("fr;q=0.9,zh-TW;q=0.8", None)),
            Lang::Zh
        );
        assert_eq!(Lang::of(None, &headers("de", None)), Lang::En);
        let cookie = Some("a=b; appsnap_lang=zh");
        assert_eq!(Lang::of(None, &headers("en", cookie)), Lang::Zh);
        assert_eq!(Lang::of(Some("en"), &headers("zh", cookie)), Lang::En);
        assert_eq!(Lang::of(Some("xx"), &headers("zh", None)), Lang::Zh);
    }
}
