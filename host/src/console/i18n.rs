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

impl Strings {
    /// The name of the job kind `kind` (the API's word when it has none here).
    pub fn kind<'a>(&self, kind: &'a str) -> &'a str {
        self.kinds
            .iter()
            .find(|(k, _)| *k == kind)
            .map_or(kind, |(_, name)| name)
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
    /// Each job kind of the API (`backup`, …) and its name here.
    pub kinds: [(&'static str, &'static str); 8],
    pub nav_jobs: &'static str,
    pub restore: &'static str,
    pub restore_title: &'static str,
    pub restore_lead: &'static str,
    pub pre_stops: &'static str,
    pub pre_none_running: &'static str,
    pub pre_stay_stopped: &'static str,
    pub pre_mounts: &'static str,
    pub col_mount: &'static str,
    pub col_action: &'static str,
    pub col_path: &'static str,
    pub col_when: &'static str,
    pub act_replace: &'static str,
    pub act_create: &'static str,
    pub act_skip: &'static str,
    pub staged_yes: &'static str,
    pub staged_no: &'static str,
    pub pre_space: &'static str,
    pub col_filesystem: &'static str,
    pub col_need: &'static str,
    pub col_free: &'static str,
    pub space_short: &'static str,
    pub pre_downtime: &'static str,
    pub downtime_staged: &'static str,
    pub downtime_unstaged: &'static str,
    pub downtime_last: &'static str,
    pub pre_rollback: &'static str,
    pub rollback_text: &'static str,
    pub busy_now: &'static str,
    pub confirm_label: &'static str,
    pub confirm_wrong: &'static str,
    pub restored: &'static str,
    pub restored_text: &'static str,
    pub rolled_back: &'static str,
    pub rolled_back_text: &'static str,
    pub rollback_incomplete: &'static str,
    pub rollback_incomplete_text: &'static str,
    pub downtime_was: &'static str,
    pub not_restored: &'static str,
    pub job_log: &'static str,
    pub jobs_title: &'static str,
    pub jobs_intro: &'static str,
    pub col_kind: &'static str,
    pub col_state: &'static str,
    pub col_started: &'static str,
    pub no_jobs: &'static str,
    pub running_jobs: &'static str,
    pub seconds: &'static str,
    pub col_status: &'static str,
    pub status_ok: &'static str,
    pub status_failed: &'static str,
    pub status_stale: &'static str,
    pub status_none: &'static str,
    pub col_next_run: &'static str,
    pub on_request: &'static str,
    pub col_usage: &'static str,
    pub usage_of: &'static str,
    pub no_quota: &'static str,
    pub ago_minutes: &'static str,
    pub ago_hours: &'static str,
    pub ago_days: &'static str,
    pub col_file_size: &'static str,
    pub restored_beside_text: &'static str,
    pub kind_file: &'static str,
    pub kind_dir: &'static str,
    pub kind_symlink: &'static str,
    pub kind_hardlink: &'static str,
    pub kind_special: &'static str,
    pub snapshot_title: &'static str,
    pub details: &'static str,
    pub sha256: &'static str,
    pub verified: &'static str,
    pub verified_yes: &'static str,
    pub verified_no: &'static str,
    pub warnings_title: &'static str,
    pub mounts_title: &'static str,
    pub col_container_path: &'static str,
    pub files_title: &'static str,
    pub files_top: &'static str,
    pub col_name: &'static str,
    pub col_type: &'static str,
    pub col_mode: &'static str,
    pub col_owner: &'static str,
    pub col_modified: &'static str,
    pub download: &'static str,
    pub restore_beside: &'static str,
    pub restore_beside_help: &'static str,
    pub search_label: &'static str,
    pub search_button: &'static str,
    pub search_results: &'static str,
    pub clear_search: &'static str,
    pub next_page: &'static str,
    pub no_entries: &'static str,
    pub breadcrumb: &'static str,
    pub files_of: &'static str,
    pub browse: &'static str,
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
    kinds: [
        ("backup", "backup"),
        ("restore", "restore"),
        ("cleanup", "cleanup after a restore"),
        ("verify", "verify"),
        ("fetch", "fetch"),
        ("copy", "copy"),
        ("prune", "prune"),
        ("check", "check"),
    ],
    nav_jobs: "Jobs",
    restore: "Restore",
    restore_title: "Restore this snapshot?",
    restore_lead: "Before you confirm: what the restore will do, as the server sees the app now.",
    pre_stops: "Containers stopped, then started again",
    pre_none_running: "None: no container of the app is running.",
    pre_stay_stopped: "Stopped now, and left stopped",
    pre_mounts: "Where the data goes",
    col_mount: "Mount",
    col_action: "What happens",
    col_path: "Host path",
    col_when: "Extracted",
    act_replace: "replaced (the current data is kept aside until the restore has succeeded)",
    act_create: "created (the app no longer has this volume)",
    act_skip: "skipped",
    staged_yes: "while the app runs",
    staged_no: "while the app is stopped (a mount point)",
    pre_space: "Disk space",
    col_filesystem: "Filesystem of",
    col_need: "Needed",
    col_free: "Free",
    space_short: "Not enough free space: the restore would be refused, and nothing would be touched.",
    pre_downtime: "Expected downtime",
    downtime_staged: "About as long as stopping and starting the containers: the data is extracted beside the current data while the app runs, then swapped in by renames.",
    downtime_unstaged: "A mount point cannot be prepared beside: the app stays down while it is extracted too.",
    downtime_last: "The last restore of this app kept it down for",
    pre_rollback: "If it fails",
    rollback_text: "If any step fails (the extraction, the swap, a container that does not start or stay healthy), the data is put back as it was and the containers that were running are started again.",
    busy_now: "Another operation is running on this app; a restore is refused until it ends:",
    confirm_label: "To confirm, type the app's name",
    confirm_wrong: "The name typed is not the app's name: nothing was done.",
    restored: "Restored",
    restored_text: "The app runs on the snapshot's data.",
    rolled_back: "Failed – rolled back",
    rolled_back_text: "The app's data is as it was before, and its containers run as they did.",
    rollback_incomplete: "Rollback incomplete",
    rollback_incomplete_text: "The restore failed and its data could not all be put back. The app's containers are left stopped, so that nothing runs on mixed data. appsnap retries the repair in the background and refuses backups and restores of this app until it succeeds: free disk space or fix the cause below, then restart appsnap to retry at once.",
    downtime_was: "The app was down for",
    not_restored: "Not restored",
    job_log: "Log",
    jobs_title: "Jobs, newest first",
    jobs_intro: "Jobs are kept in memory: a restart of appsnap forgets them (never the snapshots they made).",
    col_kind: "Kind",
    col_state: "State",
    col_started: "Started",
    no_jobs: "No job since appsnap started.",
    running_jobs: "Running now",
    seconds: "s",
    col_status: "Status",
    status_ok: "ok",
    status_failed: "last backup failed",
    status_stale: "stale: no recent backup",
    status_none: "no backup yet",
    col_next_run: "Next scheduled backup",
    on_request: "only on request",
    col_usage: "Local usage (quota)",
    usage_of: "of",
    no_quota: "no quota",
    ago_minutes: "min ago",
    ago_hours: "h ago",
    ago_days: "days ago",
    col_file_size: "Size",
    restored_beside_text: "Put back beside the current data, which was not touched (the app kept running):",
    kind_file: "file",
    kind_dir: "folder",
    kind_symlink: "symbolic link",
    kind_hardlink: "hard link",
    kind_special: "special file",
    snapshot_title: "Snapshot",
    details: "Details",
    sha256: "SHA-256",
    verified: "Verified",
    verified_yes: "yes: its structure was checked in full",
    verified_no: "not yet (a restore checks it first)",
    warnings_title: "Warnings from the backup",
    mounts_title: "Mounts",
    col_container_path: "In the containers",
    files_title: "Files",
    files_top: "All mounts",
    col_name: "Name",
    col_type: "Type",
    col_mode: "Mode",
    col_owner: "Owner",
    col_modified: "Modified",
    download: "Download",
    restore_beside: "Restore beside",
    restore_beside_help: "Restore beside puts a copy next to the current data (name.restored-snapshot…), with the app running; nothing is replaced.",
    search_label: "Search names below this folder",
    search_button: "Search",
    search_results: "Search results for",
    clear_search: "Clear the search",
    next_page: "Next page",
    no_entries: "Nothing here.",
    breadcrumb: "Folder",
    files_of: "Files of",
    browse: "Browse",
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
    kinds: [
        ("backup", "备份"),
        ("restore", "恢复"),
        ("cleanup", "恢复后清理"),
        ("verify", "校验"),
        ("fetch", "下载"),
        ("copy", "复制"),
        ("prune", "清理存储库"),
        ("check", "检查"),
    ],
    nav_jobs: "任务",
    restore: "恢复",
    restore_title: "恢复此快照？",
    restore_lead: "确认之前：服务器根据应用当前状态算出的恢复过程。",
    pre_stops: "将停止并重新启动的容器",
    pre_none_running: "无：该应用没有正在运行的容器。",
    pre_stay_stopped: "当前已停止，恢复后保持停止",
    pre_mounts: "数据去向",
    col_mount: "挂载",
    col_action: "操作",
    col_path: "主机路径",
    col_when: "解压时机",
    act_replace: "替换（恢复成功前当前数据保留在一旁）",
    act_create: "新建（该应用已没有此卷）",
    act_skip: "跳过",
    staged_yes: "应用运行期间",
    staged_no: "应用停止期间（挂载点）",
    pre_space: "磁盘空间",
    col_filesystem: "所在文件系统",
    col_need: "需要",
    col_free: "可用",
    space_short: "可用空间不足：恢复会被拒绝，不会改动任何数据。",
    pre_downtime: "预计停机时间",
    downtime_staged: "大约等于停止并启动容器所需的时间：数据在应用运行时解压到当前数据旁边，然后通过重命名换入。",
    downtime_unstaged: "挂载点无法在旁边预先解压：解压它期间应用也处于停止状态。",
    downtime_last: "该应用上次恢复的停机时长：",
    pre_rollback: "如果失败",
    rollback_text: "任何一步失败（解压、换入、容器无法启动或不健康）时，数据会恢复原样，原先运行的容器会重新启动。",
    busy_now: "该应用正在进行另一项操作，结束前恢复会被拒绝：",
    confirm_label: "请输入应用名称以确认",
    confirm_wrong: "输入的名称与应用名称不符：未执行任何操作。",
    restored: "已恢复",
    restored_text: "应用正在使用快照中的数据运行。",
    rolled_back: "失败 – 已回滚",
    rolled_back_text: "应用的数据与之前相同，容器按原状态运行。",
    rollback_incomplete: "回滚未完成",
    rollback_incomplete_text: "恢复失败，且数据未能全部还原。应用的容器保持停止，以免在混合数据上运行。appsnap 会在后台重试修复，成功前拒绝该应用的备份和恢复：请释放磁盘空间或排除下面的原因，然后重启 appsnap 立即重试。",
    downtime_was: "应用停机时长：",
    not_restored: "未恢复",
    job_log: "日志",
    jobs_title: "任务（最新在前）",
    jobs_intro: "任务只保存在内存中：appsnap 重启后会忘记它们（不会忘记它们生成的快照）。",
    col_kind: "类型",
    col_state: "状态",
    col_started: "开始时间",
    no_jobs: "appsnap 启动以来没有任务。",
    running_jobs: "正在运行",
    seconds: "秒",
    col_status: "状态",
    status_ok: "正常",
    status_failed: "上次备份失败",
    status_stale: "过期：近期没有备份",
    status_none: "尚未备份",
    col_next_run: "下次计划备份",
    on_request: "仅手动",
    col_usage: "本地占用（配额）",
    usage_of: "/",
    no_quota: "无配额",
    ago_minutes: "分钟前",
    ago_hours: "小时前",
    ago_days: "天前",
    col_file_size: "大小",
    restored_beside_text: "已恢复到当前数据旁边，当前数据未被改动（应用保持运行）：",
    kind_file: "文件",
    kind_dir: "文件夹",
    kind_symlink: "符号链接",
    kind_hardlink: "硬链接",
    kind_special: "特殊文件",
    snapshot_title: "快照",
    details: "详情",
    sha256: "SHA-256",
    verified: "已校验",
    verified_yes: "是：已完整检查其结构",
    verified_no: "尚未校验（恢复前会先校验）",
    warnings_title: "备份时的警告",
    mounts_title: "挂载",
    col_container_path: "容器中的路径",
    files_title: "文件",
    files_top: "全部挂载",
    col_name: "名称",
    col_type: "类型",
    col_mode: "权限",
    col_owner: "所有者",
    col_modified: "修改时间",
    download: "下载",
    restore_beside: "恢复到旁边",
    restore_beside_help: "“恢复到旁边”会在当前数据旁放一份副本（名称.restored-快照…），应用保持运行，不替换任何内容。",
    search_label: "在此文件夹下搜索名称",
    search_button: "搜索",
    search_results: "搜索结果：",
    clear_search: "清除搜索",
    next_page: "下一页",
    no_entries: "这里没有内容。",
    breadcrumb: "文件夹",
    files_of: "文件：",
    browse: "浏览",
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
