//! The page at `/` in a real browser: Debian's headless Chromium, driven
//! over the DevTools protocol, against a live daemon tracking a leaking
//! native process and a growing Python one; then over TLS with basic auth,
//! where the viewer may start tracking. Screenshots of each page go to
//! `target/tmp/page/` (the README shows them).

mod common;

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use common::*;
use headless_chrome::{
    Browser, LaunchOptions, Tab,
    protocol::cdp::{
        Log::LogEntryLevel, Page::CaptureScreenshotFormatOption, Runtime::ConsoleAPICalledEventTypeOption, types::Event,
    },
};

/// Host-wide detection quick enough for a test (a leak pends within
/// seconds), no escalation: the processes are tracked by pid.
const CONFIG: &str = "[collect]\ninterval_seconds = 0.5\n\
    [detect]\nsample_interval_seconds = 0.5\nwindow_seconds = 5\nfiring_after_seconds = 8\n\
    [escalation]\nenabled = false\n";

struct Page {
    _browser: Browser,
    tab: Arc<Tab>,
    /// Console errors, uncaught exceptions and failed loads, as they come.
    errors: Arc<Mutex<Vec<String>>>,
}

impl Page {
    fn open() -> Page {
        let browser = Browser::new(LaunchOptions {
            headless: true,
            sandbox: false,
            path: Some(PathBuf::from("/usr/bin/chromium")),
            window_size: Some((1360, 1400)),
            ignore_certificate_errors: true,
            idle_browser_timeout: Duration::from_secs(600),
            ..Default::default()
        })
        .expect("starting /usr/bin/chromium (cargo xtask setup installs it)");
        let tab = browser.new_tab().unwrap();
        tab.set_default_timeout(Duration::from_secs(30));
        tab.enable_log().unwrap();
        tab.enable_runtime().unwrap();
        let errors = Arc::new(Mutex::new(Vec::new()));
        let seen = errors.clone();
        tab.add_event_listener(Arc::new(move |event: &Event| {
            let error = match event {
                Event::LogEntryAdded(e) if e.params.entry.level == LogEntryLevel::Error => {
                    Some(format!("log: {} {:?}", e.params.entry.text, e.params.entry.url))
                }
                Event::RuntimeExceptionThrown(e) => Some(format!(
                    "exception: {}",
                    e.params
                        .exception_details
                        .exception
                        .as_ref()
                        .and_then(|x| x.description.clone())
                        .unwrap_or_else(|| e.params.exception_details.text.clone())
                )),
                Event::RuntimeConsoleAPICalled(e) if e.params.Type == ConsoleAPICalledEventTypeOption::Error => {
                    Some(format!("console.error: {:?}", e.params.args))
                }
                _ => None,
            };
            if let Some(e) = error {
                seen.lock().unwrap().push(e);
            }
        }))
        .unwrap();
        Page {
            _browser: browser,
            tab,
            errors,
        }
    }

    fn go(&self, url: &str) {
        self.tab.navigate_to(url).unwrap().wait_until_navigated().unwrap();
    }

    /// Follows an in-page link (no load event: the page routes by hash).
    fn follow(&self, hash: &str) {
        self.eval(&format!("location.hash = {hash:?}; true"));
    }

    /// The inner text of the first element matching `selector`, once it
    /// satisfies `ok` (the page refreshes every few seconds).
    fn wait_text(&self, selector: &str, timeout: Duration, ok: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + timeout;
        let mut last = String::new();
        while Instant::now() < deadline {
            if let Ok(e) = self.tab.find_element(selector)
                && let Ok(t) = e.get_inner_text()
            {
                if ok(&t) {
                    return t;
                }
                last = t;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        panic!(
            "{selector} never showed what was expected; last: {last:?}; errors: {:?}",
            self.errors()
        );
    }

    fn eval(&self, js: &str) -> serde_json::Value {
        self.tab
            .evaluate(js, false)
            .unwrap()
            .value
            .unwrap_or(serde_json::Value::Null)
    }

    fn wait_true(&self, what: &str, js: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.eval(js) != serde_json::Value::Bool(true) {
            assert!(
                Instant::now() < deadline,
                "{what}: never true; errors: {:?}",
                self.errors()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    fn screenshot(&self, name: &str) -> PathBuf {
        let png = self
            .tab
            .capture_screenshot(CaptureScreenshotFormatOption::Png, None, None, true)
            .unwrap();
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("page");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, png).unwrap();
        eprintln!("screenshot: {}", path.display());
        path
    }

    fn errors(&self) -> Vec<String> {
        self.errors.lock().unwrap().clone()
    }
}

/// The line of `leak_slowly`'s malloc in patterns.c.
fn leak_line() -> usize {
    let src = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/patterns.c")).unwrap();
    let def = src.lines().position(|l| l.contains("void *leak_slowly(")).unwrap();
    def + 2
}

fn census_py() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/census.py")
}

#[test]
#[ignore = "needs root, eBPF and chromium; run with `cargo xtask test`"]
fn the_page_shows_the_host_a_native_leak_and_a_python_process_in_a_real_browser() {
    require_root();
    let leak = Fixture::start_from(&fixture_copy("patterns", "page-leak"), &["leak", "300000"]);
    let mut py = Fixture::start_from(
        Path::new("/usr/bin/python3.11"),
        &[census_py().to_str().unwrap(), "grow"],
    );
    let _population = py.read_line();
    let d = Daemon::start(CONFIG, &["--pid", &leak.pid.to_string(), "--pid", &py.pid.to_string()]);
    d.wait_tracked(leak.pid);
    d.wait_tracked(py.pid);
    // The API first: the leak is flagged host-wide before the page is judged.
    d.wait_for("the leak's alert", Duration::from_secs(60), || {
        let r = d.json(&format!("/processes?pid={}", leak.pid));
        matches!(r["processes"][0]["alert"]["state"].as_str(), Some("pending" | "firing"))
    });

    let page = Page::open();
    let base = format!("http://{}", d.addr);
    page.go(&format!("{base}/"));
    let leak_row = format!("#processes tr[data-pid=\"{}\"]", leak.pid);
    let py_row = format!("#processes tr[data-pid=\"{}\"]", py.pid);
    let row = page.wait_text(&leak_row, Duration::from_secs(20), |t| t.contains("page-leak"));
    assert!(row.contains("tracked"), "{row}");
    let class = page
        .tab
        .find_element(&leak_row)
        .unwrap()
        .get_attribute_value("class")
        .unwrap();
    assert_eq!(class.as_deref(), Some("flagged"), "the leaker is marked");
    page.wait_text(&py_row, Duration::from_secs(20), |t| t.contains("python3.11"));
    assert_eq!(
        page.eval(&format!(
            "const rows = [...document.querySelectorAll('#processes tbody tr')]; \
             rows.slice(0, rows.findIndex(r => r.dataset.pid === '{}') + 1).every(r => r.className === 'flagged')",
            leak.pid
        )),
        serde_json::json!(true),
        "flagged processes come first"
    );
    page.screenshot("host.png");
    page.tab.find_element("#filter").unwrap().type_into("page-le").unwrap();
    page.wait_true(
        "the filter keeps the leaker only",
        &format!(
            "[...document.querySelectorAll('#processes tbody tr')].map(r => r.dataset.pid).join() === '{}'",
            leak.pid
        ),
        Duration::from_secs(10),
    );

    // The leaker's page: the leak site with its source line, the chart, a
    // flame graph that zooms and searches; no track button without auth.
    page.follow(&format!("#/process/{}", leak.pid));
    let site = format!("leak_slowly patterns.c:{}", leak_line());
    let stacks = page.wait_text("#stacks", Duration::from_secs(20), |t| t.contains(&site));
    assert!(stacks.contains("malloc()"), "{stacks}");
    page.wait_true(
        "the memory chart draws the heap and the tracked live bytes",
        "!!document.querySelector('#memory-chart polyline.heap') && !!document.querySelector('#memory-chart polyline.live')",
        Duration::from_secs(20),
    );
    let head = page.wait_text("#process", Duration::from_secs(5), |t| t.contains("Tracked live"));
    assert!(head.contains("Peak"), "{head}");
    assert!(page.tab.find_element("#track").is_err() && page.tab.find_element("#untrack").is_err());
    page.screenshot("process.png");
    let frame = "[...document.querySelectorAll('#flame .fn')].find(e => e.textContent.startsWith('leak_slowly'))";
    page.wait_true("a leak_slowly frame", &format!("!!{frame}"), Duration::from_secs(10));
    page.eval(&format!("{frame}.click(); true"));
    assert_eq!(
        page.eval("document.querySelector('#flame').dataset.zoom"),
        serde_json::json!(format!("leak_slowly patterns.c:{}", leak_line()))
    );
    assert_eq!(page.eval(&format!("{frame}.style.width")), serde_json::json!("100%"));
    assert_eq!(
        page.eval("[...document.querySelectorAll('#flame .fn')].find(e => e.textContent === '_start').className"),
        serde_json::json!("fn native ancestor"),
        "the zoomed frame's callers stay above it, faded"
    );
    page.tab.find_element("#search").unwrap().type_into("malloc").unwrap();
    page.wait_true(
        "the search marks malloc",
        "document.querySelectorAll('#flame .fn.match').length >= 1 && document.querySelector('#matched').textContent.includes('%')",
        Duration::from_secs(5),
    );
    page.tab.find_element("#reset-zoom").unwrap().click().unwrap();
    assert_eq!(
        page.eval("document.querySelector('#flame').dataset.zoom"),
        serde_json::json!("all")
    );
    // Growth since a moment: the leak site grew.
    page.eval(
        "const m = document.querySelector('#mode'); m.value = 'since60'; m.dispatchEvent(new Event('change')); true",
    );
    page.wait_text("#stacks", Duration::from_secs(15), |t| {
        t.contains("Net growth") && t.contains(&site)
    });

    // The Python process: its census names the growing type, and its stacks
    // fold the interpreter's frames unless asked.
    page.follow(&format!("#/process/{}", py.pid));
    let census = page.wait_text("#census", Duration::from_secs(30), |t| t.contains("Growing"));
    assert!(census.contains("__main__"), "{census}");
    page.wait_text("#census-growth", Duration::from_secs(40), |t| {
        t.lines()
            .find(|l| l.starts_with("Growing\t__main__"))
            .is_some_and(|l| l.split('\t').nth(3).is_some_and(|change| change.starts_with('+')))
    });
    page.wait_true(
        "folded interpreter frames and a Python line",
        "!!document.querySelector('#flame .fn.folded') && [...document.querySelectorAll('#flame .fn.python')].some(e => e.textContent.includes('census.py:'))",
        Duration::from_secs(20),
    );
    assert_eq!(
        page.eval("[...document.querySelectorAll('#flame .fn')].some(e => e.textContent.startsWith('_PyEval_EvalFrameDefault'))"),
        serde_json::json!(false)
    );
    page.screenshot("python.png");
    // Zooming into a Python function that holds part of the heap widens it
    // to the whole graph.
    let part = "[...document.querySelectorAll('#flame .fn.python')].find(e => parseFloat(e.style.width) > 1 && e.style.width !== '100%')";
    page.wait_true(
        "a Python frame holding part of the heap",
        &format!("!!{part}"),
        Duration::from_secs(10),
    );
    let name = page.eval(&format!("const e = {part}; e.click(); e.textContent"));
    assert_eq!(page.eval("document.querySelector('#flame').dataset.zoom"), name);
    assert_eq!(
        page.eval(&format!(
            "[...document.querySelectorAll('#flame .fn')].find(e => e.textContent === {name}).style.width"
        )),
        serde_json::json!("100%")
    );
    page.tab.find_element("#reset-zoom").unwrap().click().unwrap();
    let boxes = "document.querySelectorAll('#flame .fn').length";
    let folded_boxes = page.eval(boxes).as_u64().unwrap();
    page.tab.find_element("#all-frames").unwrap().click().unwrap();
    page.wait_true(
        "every frame shown",
        &format!("!document.querySelector('#flame .fn.folded') && {boxes} > {folded_boxes} + 4"),
        Duration::from_secs(15),
    );

    // The same in the text report (`?frames=`), as the CLI prints it: each
    // interpreter frame (python3.11's own, named or not) only with frames=all.
    let (_, folded) = d.get(&format!("/leaks?pid={}&format=text", py.pid));
    let (_, all) = d.get(&format!("/leaks?pid={}&format=text&frames=all", py.pid));
    let interpreter = |text: &str| text.lines().filter(|l| l.ends_with("[python3.11]")).count();
    assert!(folded.contains("interpreter frames  [python3.11]"), "{folded}");
    assert!(
        folded
            .lines()
            .filter(|l| l.ends_with("[python3.11]"))
            .all(|l| l.contains("interpreter frame")),
        "{folded}"
    );
    assert!(interpreter(&all) > interpreter(&folded) + 4, "{all}");
    assert!(!all.contains("interpreter frame"), "{all}");
    assert_eq!(
        folded.matches("census.py:").count(),
        all.matches("census.py:").count(),
        "Python lines are kept"
    );

    let errors = page.errors();
    assert!(errors.is_empty(), "the page logged errors: {errors:#?}");
    drop(leak);
    drop(py);
}

#[test]
#[ignore = "needs root, eBPF, chromium and openssl; run with `cargo xtask test`"]
fn over_tls_with_basic_auth_the_page_asks_for_a_password_and_may_start_tracking() {
    require_root();
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("page-tls");
    std::fs::create_dir_all(&dir).unwrap();
    self_signed_cert(&dir);
    let hash = bcrypt::hash("page-secret", 8).unwrap();
    let web = dir.join("web.yml");
    std::fs::write(
        &web,
        format!("tls_server_config:\n  cert_file: memwatch.crt\n  key_file: memwatch.key\nbasic_auth_users:\n  ops: {hash}\n"),
    )
    .unwrap();
    let leak = Fixture::start_from(&fixture_copy("patterns", "page-tls-leak"), &["leak", "100000"]);
    let control = dir.join("control.sock");
    let d = Daemon::spawn(
        CONFIG,
        &[
            "--web-config-file",
            web.to_str().unwrap(),
            "--control-socket",
            control.to_str().unwrap(),
        ],
        &[],
        &[],
    );
    let port = d.addr.rsplit(':').next().unwrap().to_string();
    let base = format!("https://127.0.0.1:{port}");

    let page = Page::open();
    // Without credentials the daemon answers 401 with a challenge, and a
    // headless browser, with no one to ask for a password, fails the load.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let failed = page.tab.navigate_to(&format!("{base}/")).err().map(|e| e.to_string());
        match failed {
            Some(e) if e.contains("ERR_INVALID_AUTH_CREDENTIALS") => break,
            // Not listening yet.
            Some(e) if e.contains("ERR_CONNECTION_REFUSED") && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(300))
            }
            other => panic!("expected the browser to be refused for want of credentials: {other:?}"),
        }
    }
    // The browser answers the challenge as a person at its password dialog
    // would; the page's own requests then carry the credentials.
    page.tab.enable_fetch(None, Some(true)).unwrap();
    page.tab
        .authenticate(Some("ops".into()), Some("page-secret".into()))
        .unwrap();
    page.go(&format!("{base}/"));
    page.wait_text("#processes", Duration::from_secs(30), |t| t.contains("page-tls-leak"));
    // The refused load's error page reports the 401 (late): nothing else may.
    page.errors
        .lock()
        .unwrap()
        .retain(|e| !e.contains("chrome-error://chromewebdata/"));
    page.follow(&format!("#/process/{}", leak.pid));
    page.wait_text("#process", Duration::from_secs(30), |t| t.contains("page-tls-leak"));
    let button = page.tab.wait_for_element("#track").unwrap();
    page.screenshot("process-untracked-tls.png");
    button.click().unwrap();
    let site = format!("leak_slowly patterns.c:{}", leak_line());
    page.wait_text("#stacks", Duration::from_secs(30), |t| t.contains(&site));
    page.tab.wait_for_element("#untrack").unwrap();
    let errors = page.errors();
    assert!(errors.is_empty(), "the page logged errors: {errors:#?}");
    // A request from the page without its credentials gets 401 (the
    // browser then logs the failed load, which is why this comes last).
    let omitted = page
        .tab
        .evaluate("fetch('/processes', { credentials: 'omit' }).then(r => r.status)", true)
        .unwrap();
    assert_eq!(omitted.value, Some(serde_json::json!(401)));
    drop(leak);
    d.stop();
}
