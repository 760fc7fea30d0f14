//! `ringvault ui` in a real browser: Debian's chromium, headless, driven
//! over WebDriver (chromedriver, through fantoccini) the way a person
//! clicks through the page; and the API's token check over plain HTTP.
//!
//! Without `chromedriver` on PATH the test says so and passes, unless
//! `RINGVAULT_REQUIRE_BROWSER` is set (CI sets it), when it fails.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use fantoccini::elements::Element;
use fantoccini::{Client, ClientBuilder, Locator};
use ringvault_tests::{TestCluster, free_ports, http_get, wait_for};
use serde_json::{Value, json};

use crate::{TEST_CHUNKS, random_bytes};

/// Longest wait for one element, download or process start.
const STEP: Duration = Duration::from_secs(30);
/// Longest the whole browser session may take.
const SESSION: Duration = Duration::from_secs(240);

#[test]
fn the_ui_browses_versions_and_downloads_in_a_real_browser() {
    let Some(driver) = chromedriver() else {
        return;
    };
    let c = TestCluster::start(3, 3, 2).unwrap();
    c.ok(&["init", "--chunker-params", TEST_CHUNKS]).unwrap();
    let src = c.dir.path().join("src");
    let docs = src.join("docs");
    std::fs::create_dir_all(&docs).unwrap();
    // About 300 KiB: several chunks, so a download streams more than one.
    let big = random_bytes(300 << 10, 41);
    std::fs::write(docs.join("big.bin"), &big).unwrap();
    let first = b"the notes, as they were first\n".to_vec();
    std::fs::write(docs.join("notes.txt"), &first).unwrap();
    let s1 = backup(&c, &src);
    let second = b"the notes, as they are now\nwith a second line\n".to_vec();
    std::fs::write(docs.join("notes.txt"), &second).unwrap();
    let s2 = backup(&c, &src);

    let mut ui = UiProcess::start(&c).unwrap();
    check_api_access(&ui, &s1, &s2);

    let downloads = c.dir.path().join("downloads");
    std::fs::create_dir_all(&downloads).unwrap();
    let restored = c.dir.path().join("restored");
    let browser = Browser::start(&driver, c.dir.path()).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let expect = Expect {
        s1: &s1,
        s2: &s2,
        first: &first,
        second: &second,
        big: &big,
        downloads: &downloads,
        restored: &restored,
    };
    let url = ui.url.clone();
    let started = Instant::now();
    let outcome = rt.block_on(async {
        tokio::time::timeout(
            SESSION,
            session(&browser, &downloads, |c| async move {
                click_through(&c, &url, &expect).await
            }),
        )
        .await
        .unwrap_or_else(|_| Err(anyhow::anyhow!("the browser session ran over {SESSION:?}")))
    });
    eprintln!("browser session: {:?}", started.elapsed());
    drop(browser);
    if let Err(e) = outcome {
        panic!("{e:#}\nui log:\n{}", ui.log());
    }

    // SIGTERM stops it, cleanly.
    let status = ui.terminate().unwrap();
    assert!(
        status.success(),
        "ringvault ui exited with {status}\n{}",
        ui.log()
    );
}

/// Issue 13, point 7: a restore from the page never replaces a local file
/// that differs from the snapshot unless the person chooses to. With the
/// page's defaults (overwrite `never`) a local edit survives and the page
/// says the file was kept; a dry run shows what would be replaced and
/// writes nothing; `always`, chosen, replaces it. The API's default is the
/// page's.
#[test]
fn the_ui_keeps_local_changes_unless_told_to_replace_them() {
    let Some(driver) = chromedriver() else {
        return;
    };
    let c = TestCluster::start(3, 3, 2).unwrap();
    c.ok(&["init", "--chunker-params", TEST_CHUNKS]).unwrap();
    let src = c.dir.path().join("src");
    let docs = src.join("docs");
    std::fs::create_dir_all(&docs).unwrap();
    let backed_up = b"the notes, as backed up\n".to_vec();
    let gone = b"deleted since the backup\n".to_vec();
    std::fs::write(docs.join("notes.txt"), &backed_up).unwrap();
    std::fs::write(docs.join("other.txt"), b"not edited since\n").unwrap();
    std::fs::write(docs.join("gone.txt"), &gone).unwrap();
    let snapshot = backup(&c, &src);
    // Local changes since: one file edited, one deleted.
    let edited = b"a local edit, which no restore may lose silently\n".to_vec();
    std::fs::write(docs.join("notes.txt"), &edited).unwrap();
    std::fs::remove_file(docs.join("gone.txt")).unwrap();

    let mut ui = UiProcess::start(&c).unwrap();
    let downloads = c.dir.path().join("downloads");
    std::fs::create_dir_all(&downloads).unwrap();
    let browser = Browser::start(&driver, c.dir.path()).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let keep = Keep {
        snapshot: &snapshot,
        src: &src,
        backed_up: &backed_up,
        edited: &edited,
        gone: &gone,
    };
    let url = ui.url.clone();
    let outcome = rt.block_on(async {
        tokio::time::timeout(
            SESSION,
            session(&browser, &downloads, |c| async move {
                keep_local_changes(&c, &url, &keep).await
            }),
        )
        .await
        .unwrap_or_else(|_| Err(anyhow::anyhow!("the browser session ran over {SESSION:?}")))
    });
    drop(browser);
    if let Err(e) = outcome {
        panic!("{e:#}\nui log:\n{}", ui.log());
    }

    // The API with the default body (no `overwrite`, no `dry_run`) keeps
    // a local edit too, and says what it did with each file.
    let notes = docs.join("notes.txt");
    std::fs::write(&notes, &edited).unwrap();
    let (status, answer) = post_json(
        &ui.addr,
        "/api/restore",
        &ui.token,
        &json!({ "snapshot": snapshot, "path": "src/docs", "target": src }),
    )
    .unwrap();
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        std::fs::read(&notes).unwrap(),
        edited,
        "POST /api/restore with the default body replaced a local edit: {answer}"
    );
    assert_eq!(answer["overwrite"], "never", "{answer}");
    assert_eq!(answer["dry_run"], false, "{answer}");
    assert_eq!(answer["errors"], json!([]), "{answer}");
    let action = |name: &str| {
        let path = docs.join(name).display().to_string();
        answer["actions"]
            .as_array()
            .and_then(|all| all.iter().find(|a| a["path"] == path.as_str()))
            .map(|a| (a["action"].clone(), a["kind"].clone()))
    };
    assert_eq!(
        action("notes.txt"),
        Some((json!("skipped"), json!("file"))),
        "{answer}"
    );
    assert_eq!(
        action("gone.txt"),
        Some((json!("skipped"), json!("file"))),
        "restored by the browser session: {answer}"
    );
    assert_eq!(answer["skipped"], 3, "{answer}");
    assert_eq!(answer["files"], 0, "{answer}");
    // A policy the CLI does not know is refused, and nothing written.
    let (status, answer) = post_json(
        &ui.addr,
        "/api/restore",
        &ui.token,
        &json!({ "snapshot": snapshot, "path": "src/docs", "target": src,
                 "overwrite": "sometimes" }),
    )
    .unwrap();
    assert_eq!(status, 400, "{answer}");
    assert!(answer["error"].is_string(), "{answer}");
    assert_eq!(std::fs::read(&notes).unwrap(), edited);

    let status = ui.terminate().unwrap();
    assert!(status.success(), "ringvault ui exited with {status}");
}

/// What [`keep_local_changes`] works with: `src/docs` backed up in
/// `snapshot` holding `notes.txt` (`backed_up`, edited locally since to
/// `edited`), `other.txt` (unchanged since) and `gone.txt` (`gone`, deleted
/// since).
struct Keep<'a> {
    snapshot: &'a str,
    src: &'a Path,
    backed_up: &'a [u8],
    edited: &'a [u8],
    gone: &'a [u8],
}

/// Restores `src/docs` over itself from the page three times: with the
/// defaults, as a dry run replacing what differs, and with `always`.
async fn keep_local_changes(c: &Client, url: &str, k: &Keep<'_>) -> anyhow::Result<()> {
    let docs = k.src.join("docs");
    let notes = docs.join("notes.txt");
    let row = |name: &str, action: &str| {
        format!(
            "#restore-actions tr[data-path='{}'][data-action='{action}']",
            docs.join(name).display()
        )
    };
    c.goto(url).await?;
    click(
        c,
        &format!("#timeline .snap[data-snapshot='{}']", k.snapshot),
    )
    .await?;
    click(c, "#listing button[data-path='src']").await?;
    click(c, "#listing button[data-path='src/docs']").await?;
    find(c, "#restore-path[data-path='src/docs']").await?;
    find(c, "#restore-target")
        .await?
        .send_keys(&k.src.display().to_string())
        .await?;

    // With the defaults: the deleted file comes back, the edit stays.
    click(c, "#restore-run").await?;
    let result = find(c, "#restore-result[data-done]").await?;
    let now = std::fs::read(&notes)?;
    ensure!(
        now == k.edited,
        "the default restore replaced the local edit of notes.txt: it now holds {:?}",
        String::from_utf8_lossy(&now)
    );
    ensure!(
        std::fs::read(docs.join("gone.txt"))? == k.gone,
        "the default restore did not bring back the deleted gone.txt"
    );
    let done = result.attr("data-done").await?.unwrap_or_default();
    ensure!(done == "ok", "restore: {}", result.text().await?);
    find(c, "#restore-result[data-done][data-dry-run='false']").await?;
    let kept = find(c, &row("notes.txt", "skipped")).await?.text().await?;
    ensure!(kept.contains("kept"), "the row of notes.txt says {kept:?}");
    find(c, &row("gone.txt", "new")).await?;
    let summary = find(c, "#restore-summary").await?.text().await?;
    ensure!(
        summary.contains("kept"),
        "the summary does not say that files were kept: {summary:?}"
    );
    let policy = find(c, "#restore-overwrite").await?.prop("value").await?;
    ensure!(
        policy.as_deref() == Some("never"),
        "the default policy is {policy:?}"
    );
    // Every control of the form has a label.
    let unlabeled = c
        .execute(
            "return [...document.querySelectorAll('#restore-form input, #restore-form select')]\
             .filter((e) => e.labels.length === 0).map((e) => e.id);",
            vec![],
        )
        .await?;
    ensure!(
        unlabeled == json!([]),
        "controls without a label: {unlabeled}"
    );
    picture(c, "restore-kept").await?;

    // A dry run replacing what differs: notes.txt would be replaced,
    // other.txt is as in the snapshot; nothing is written.
    find(c, "#restore-overwrite")
        .await?
        .select_by_value("if-changed")
        .await?;
    click(c, "#restore-dry-run").await?;
    click(c, "#restore-run").await?;
    find(c, "#restore-result[data-done='ok'][data-dry-run='true']").await?;
    let would = find(c, &row("notes.txt", "replaced")).await?.text().await?;
    ensure!(
        would.contains("would"),
        "the dry run's row of notes.txt says {would:?}"
    );
    find(c, &row("other.txt", "unchanged")).await?;
    let now = std::fs::read(&notes)?;
    ensure!(
        now == k.edited,
        "the dry run changed notes.txt: {:?}",
        String::from_utf8_lossy(&now)
    );
    picture(c, "restore-dry-run").await?;

    // Chosen: always replace. Now the file is the snapshot's.
    find(c, "#restore-overwrite")
        .await?
        .select_by_value("always")
        .await?;
    click(c, "#restore-dry-run").await?;
    click(c, "#restore-run").await?;
    find(c, "#restore-result[data-done='ok'][data-dry-run='false']").await?;
    find(c, &row("notes.txt", "replaced")).await?;
    let now = std::fs::read(&notes)?;
    ensure!(
        now == k.backed_up,
        "overwrite=always did not restore notes.txt: {:?}",
        String::from_utf8_lossy(&now)
    );
    picture(c, "restore-replaced").await?;
    Ok(())
}

/// What the session should find.
struct Expect<'a> {
    s1: &'a str,
    s2: &'a str,
    first: &'a [u8],
    second: &'a [u8],
    big: &'a [u8],
    downloads: &'a Path,
    restored: &'a Path,
}

/// chromedriver's path; `None` (the test says it skips) when it is not on
/// PATH, unless `RINGVAULT_REQUIRE_BROWSER` is set: then it fails.
fn chromedriver() -> Option<PathBuf> {
    let found = find_on_path("chromedriver");
    if found.is_none() {
        assert!(
            std::env::var_os("RINGVAULT_REQUIRE_BROWSER").is_none(),
            "RINGVAULT_REQUIRE_BROWSER is set but chromedriver is not on PATH \
             (apt-get install chromium chromium-driver)"
        );
        eprintln!(
            "SKIPPED ui browser test: chromedriver is not on PATH \
             (apt-get install chromium chromium-driver to run it)"
        );
    }
    found
}

/// Opens a browser session (downloads going to `downloads`), takes the
/// `steps`, and closes it (also when a step fails, so that chromedriver
/// stops chromium).
async fn session<F, Fut>(browser: &Browser, downloads: &Path, steps: F) -> anyhow::Result<()>
where
    F: FnOnce(Client) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let mut chrome = json!({
        "args": [
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--window-size=1280,1000",
            format!("--user-data-dir={}", browser.profile.display()),
        ],
        "prefs": {
            "download.default_directory": downloads,
            "download.prompt_for_download": false,
            "download.directory_upgrade": true,
            "safebrowsing.enabled": false,
        },
    });
    if Path::new("/usr/bin/chromium").is_file() {
        chrome["binary"] = json!("/usr/bin/chromium");
    }
    let mut caps = serde_json::Map::new();
    caps.insert("browserName".into(), json!("chrome"));
    caps.insert("goog:chromeOptions".into(), chrome);
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    let client = ClientBuilder::new(connector)
        .capabilities(caps)
        .connect(&browser.url)
        .await
        .context("starting a chromium session")?;
    let result = steps(client.clone()).await;
    let page = match &result {
        Err(_) => client.source().await.ok(),
        Ok(()) => None,
    };
    if let Some(html) = page {
        eprintln!("page at the failure:\n{html}");
    }
    let _ = client.close().await;
    result
}

/// The steps a person takes: pick the older snapshot, open the folders,
/// pick the text file, list its versions, download the older one; then
/// download the large file, diff the two snapshots, and restore a folder.
async fn click_through(c: &Client, url: &str, e: &Expect<'_>) -> anyhow::Result<()> {
    c.goto(url).await?;
    click(c, &format!("#timeline .snap[data-snapshot='{}']", e.s1)).await?;
    click(c, "#listing button[data-path='src']").await?;
    click(c, "#listing button[data-path='src/docs']").await?;
    click(c, "#listing button[data-path='src/docs/notes.txt']").await?;
    find(c, "#file-panel[data-path='src/docs/notes.txt']").await?;
    // The preview shows the file as it was in the picked (older) snapshot.
    let preview = find(c, "#file-preview:not([hidden])").await?;
    ensure!(
        preview.text().await?.trim() == String::from_utf8_lossy(e.first).trim(),
        "the preview does not show the older text"
    );
    picture(c, "file").await?;

    click(c, "#show-versions").await?;
    let rows = until("two rows of versions", || async {
        let rows = c
            .find_all(Locator::Css("#versions-table tbody tr"))
            .await
            .ok()?;
        (rows.len() == 2).then_some(rows)
    })
    .await?;
    let mut listed = Vec::new();
    for row in &rows {
        listed.push((
            row.attr("data-version-snapshot").await?.unwrap_or_default(),
            row.attr("data-change").await?.unwrap_or_default(),
        ));
    }
    ensure!(
        listed
            == [
                (e.s2.to_owned(), "content".to_owned()),
                (e.s1.to_owned(), "added".to_owned()),
            ],
        "versions listed: {listed:?}"
    );
    click(
        c,
        &format!(
            "#versions-table a.download[data-version-snapshot='{}']",
            e.s1
        ),
    )
    .await?;
    let got = downloaded(&e.downloads.join("notes.txt")).await?;
    ensure!(
        got == e.first,
        "the downloaded older version differs from the source: {:?}",
        String::from_utf8_lossy(&got)
    );

    // The two versions side by side, oldest on the left.
    for s in [e.s1, e.s2] {
        click(
            c,
            &format!("#versions-table .pick[data-version-snapshot='{s}']"),
        )
        .await?;
    }
    click(c, "#compare-versions:not([disabled])").await?;
    find(c, "#compare:not([hidden])").await?;
    picture(c, "versions").await?;
    let left = find(c, "#compare-left").await?.text().await?;
    let right = find(c, "#compare-right").await?.text().await?;
    ensure!(
        left.trim() == String::from_utf8_lossy(e.first).trim()
            && right.trim() == String::from_utf8_lossy(e.second).trim(),
        "side by side: {left:?} | {right:?}"
    );

    // A file of several chunks, streamed.
    click(c, "#listing button[data-path='src/docs/big.bin']").await?;
    find(c, "#file-panel[data-path='src/docs/big.bin']").await?;
    click(c, "#file-download").await?;
    let got = downloaded(&e.downloads.join("big.bin")).await?;
    ensure!(
        got == e.big,
        "the downloaded big.bin differs ({} bytes, {} expected)",
        got.len(),
        e.big.len()
    );

    // The diff between the two snapshots (by default the two newest, under
    // the open folder): notes.txt changed, big.bin did not.
    click(c, "#diff-run").await?;
    find(
        c,
        "#diff-table tr[data-path='src/docs/notes.txt'][data-change='content']",
    )
    .await?;
    let rows = c.find_all(Locator::Css("#diff-table tbody tr")).await?;
    ensure!(
        rows.len() == 1,
        "the diff lists {} changes, 1 expected",
        rows.len()
    );
    picture(c, "diff").await?;

    // Restore the open folder (as of the older snapshot) into a new one.
    click(c, "#crumbs button[data-path='src/docs']").await?;
    find(c, "#restore-path[data-path='src/docs']").await?;
    let target = find(c, "#restore-target").await?;
    target.send_keys(&e.restored.display().to_string()).await?;
    click(c, "#restore-run").await?;
    let result = find(c, "#restore-result[data-done]").await?;
    let done = result.attr("data-done").await?.unwrap_or_default();
    picture(c, "restore").await?;
    ensure!(done == "ok", "restore: {}", result.text().await?);
    let docs = e.restored.join("docs");
    ensure!(
        std::fs::read(docs.join("notes.txt"))? == e.first,
        "restored notes.txt"
    );
    ensure!(
        std::fs::read(docs.join("big.bin"))? == e.big,
        "restored big.bin"
    );
    Ok(())
}

/// With `RINGVAULT_UI_SCREENSHOTS=DIR`, saves a picture of the page as
/// `DIR/NAME.png`, for a person to look at.
async fn picture(c: &Client, name: &str) -> anyhow::Result<()> {
    if let Some(dir) = std::env::var_os("RINGVAULT_UI_SCREENSHOTS") {
        let png = c.screenshot().await?;
        std::fs::write(Path::new(&dir).join(format!("{name}.png")), png)?;
    }
    Ok(())
}

/// Waits (bounded) for `css` and clicks it.
async fn click(c: &Client, css: &str) -> anyhow::Result<()> {
    find(c, css)
        .await?
        .click()
        .await
        .with_context(|| format!("clicking {css}"))
}

/// Waits (bounded) for an element matching `css`.
async fn find(c: &Client, css: &str) -> anyhow::Result<Element> {
    c.wait()
        .at_most(STEP)
        .for_element(Locator::Css(css))
        .await
        .with_context(|| format!("waiting for {css}"))
}

/// Polls `check` every 100 ms for at most [`STEP`].
async fn until<T, F, Fut>(what: &str, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + STEP;
    loop {
        if let Some(v) = check().await {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("gave up waiting {STEP:?} for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The bytes of a finished download at `path` (chromium writes to
/// `path.crdownload` and renames it when done).
async fn downloaded(path: &Path) -> anyhow::Result<Vec<u8>> {
    let what = format!("the download {}", path.display());
    until(&what, || async {
        let partial = path.with_extension(format!(
            "{}.crdownload",
            path.extension()?.to_string_lossy()
        ));
        if partial.exists() {
            return None;
        }
        std::fs::read(path).ok()
    })
    .await
}

/// The API answers only with the token, and errors as JSON.
fn check_api_access(ui: &UiProcess, s1: &str, s2: &str) {
    let addr = ui.addr.as_str();
    let token = ui.token.as_str();
    // No token, a wrong one (header or query): 401.
    let err = http_get(addr, "/api/snapshots").unwrap_err();
    assert!(err.to_string().contains("401"), "{err:#}");
    let wrong = "0".repeat(64);
    let (status, _, body) = request(addr, "/api/snapshots", Some(&wrong)).unwrap();
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("\"error\""), "{body}");
    let (status, _, _) = request(addr, &format!("/api/snapshots?token={wrong}"), None).unwrap();
    assert_eq!(status, 401);
    let (status, _, _) = request(addr, "/api/nothing-here", None).unwrap();
    assert_eq!(status, 401, "unknown API paths need the token too");

    // With it: the two snapshots, oldest first.
    let (status, _, body) = request(addr, "/api/snapshots", Some(token)).unwrap();
    assert_eq!(status, 200, "{body}");
    let snaps: Value = serde_json::from_str(&body).unwrap();
    let ids: Vec<&str> = snaps
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [s1, s2]);
    // The token also works in the query (download links).
    let (status, head, body) = request(
        addr,
        &format!("/api/file?snapshot={s1}&path=src/docs/notes.txt&token={token}"),
        None,
    )
    .unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-disposition: attachment; filename=\"notes.txt\""),
        "{head}"
    );
    // The mount's view of the repository: its top directories, `latest`
    // pointing at the newest snapshot, and below a snapshot's directory the
    // same listing /api/tree gives.
    let vfs = |path: &str| -> Value {
        let (status, _, body) =
            request(addr, &format!("/api/vfs?path={path}"), Some(token)).unwrap();
        assert_eq!(status, 200, "{path}: {body}");
        serde_json::from_str(&body).unwrap()
    };
    let names = |v: &Value, key: &str| -> Vec<String> {
        v["entries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e[key].as_str().unwrap_or("").to_owned())
            .collect()
    };
    let top = vfs("");
    assert_eq!(
        names(&top, "name"),
        ["hosts", "latest", "snapshots"],
        "{top}"
    );
    assert_eq!(top["entries"][1]["snapshot"].as_str(), Some(s2), "{top}");
    // Named by time (with ids where two share a second): both are there.
    let snapshots = vfs("snapshots");
    let mut listed = names(&snapshots, "snapshot");
    listed.sort();
    let mut both = [s1.to_owned(), s2.to_owned()];
    both.sort();
    assert_eq!(listed, both, "{snapshots}");
    let by_tree = |snapshot: &str| -> Value {
        let (status, _, body) = request(
            addr,
            &format!("/api/tree?snapshot={snapshot}&path=src/docs"),
            Some(token),
        )
        .unwrap();
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    };
    assert_eq!(vfs("latest/src/docs"), by_tree(s2));
    let first = snapshots["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["snapshot"] == s1)
        .and_then(|e| e["name"].as_str())
        .unwrap();
    assert_eq!(vfs(&format!("snapshots/{first}/src/docs")), by_tree(s1));
    let (status, _, _) = request(addr, "/api/vfs?path=snapshots/nothing", Some(token)).unwrap();
    assert_eq!(status, 404);

    // Errors: JSON with a 4xx status.
    let (status, _, body) = request(
        addr,
        &format!("/api/tree?snapshot={s1}&path=src/nothing"),
        Some(token),
    )
    .unwrap();
    assert_eq!(status, 404, "{body}");
    assert!(serde_json::from_str::<Value>(&body).unwrap()["error"].is_string());
    let (status, _, _) = request(
        addr,
        &format!("/api/file?snapshot={s1}&path=src/docs"),
        Some(token),
    )
    .unwrap();
    assert_eq!(status, 400, "a folder is not a download");
    let (status, _, _) = request(addr, "/api/tree?snapshot=ffffffff", Some(token)).unwrap();
    assert_eq!(status, 404);

    // The page needs no token, and loads nothing from elsewhere.
    let (status, head, _) = request(addr, "/", None).unwrap();
    assert_eq!(status, 200);
    assert!(
        head.to_ascii_lowercase()
            .contains("content-security-policy: default-src 'none'"),
        "{head}"
    );
    for file in ["/", "/app.js", "/style.css"] {
        let text = http_get(addr, file).unwrap();
        assert!(
            !text.contains("http://") && !text.contains("https://") && !text.contains("//cdn"),
            "{file} names another site"
        );
    }
}

/// `GET path` with an optional bearer token: (status, head, body).
fn request(addr: &str, path: &str, bearer: Option<&str>) -> anyhow::Result<(u16, String, String)> {
    send(addr, "GET", path, bearer, None)
}

/// `POST path` with a JSON body and a bearer token: (status, JSON body).
fn post_json(addr: &str, path: &str, token: &str, body: &Value) -> anyhow::Result<(u16, Value)> {
    let (status, _, text) = send(addr, "POST", path, Some(token), Some(body))?;
    let value = serde_json::from_str(&text).with_context(|| format!("not JSON: {text:?}"))?;
    Ok((status, value))
}

/// One HTTP/1.1 request (reads bounded to 60 s: a restore answers when it
/// is done): (status, head, body).
fn send(
    addr: &str,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    json: Option<&Value>,
) -> anyhow::Result<(u16, String, String)> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    let auth = bearer
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let body = json.map(Value::to_string).unwrap_or_default();
    let content = if json.is_some() {
        format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        )
    } else {
        String::new()
    };
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}{content}Connection: close\r\n\r\n{body}"
    )?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").context("no end of headers")?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("no status")?;
    Ok((status, head.to_owned(), body.to_owned()))
}

fn backup(c: &TestCluster, src: &Path) -> String {
    let out = c.ok(&["--json", "backup", src.to_str().unwrap()]).unwrap();
    let v: Value = serde_json::from_str(&out).unwrap();
    v["snapshot"].as_str().unwrap().to_owned()
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// A running `ringvault ui`, killed when dropped.
struct UiProcess {
    child: Child,
    /// The page's address, with the token.
    url: String,
    /// `127.0.0.1:PORT`.
    addr: String,
    token: String,
    log: PathBuf,
}

impl UiProcess {
    /// Starts it and reads the address line it prints (bounded).
    fn start(c: &TestCluster) -> anyhow::Result<Self> {
        let log = c.dir.path().join("ui.log");
        let mut child = c
            .ringvault()
            .arg("ui")
            .env("RINGVAULT_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log)?)
            .spawn()?;
        let stdout = child.stdout.take().context("stdout")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut ui = Self {
            child,
            url: String::new(),
            addr: String::new(),
            token: String::new(),
            log,
        };
        let line = rx
            .recv_timeout(STEP)
            .with_context(|| format!("no address line from ringvault ui\n{}", ui.log()))?;
        let url = line
            .strip_prefix("ringvault ui: ")
            .with_context(|| format!("unexpected first line {line:?}"))?;
        let (base, token) = url
            .split_once("/#token=")
            .with_context(|| format!("no token in {url:?}"))?;
        ui.addr = base.strip_prefix("http://").context("not http")?.to_owned();
        ensure!(ui.addr.starts_with("127.0.0.1:"), "{url}");
        ensure!(
            token.len() == 64 && token.bytes().all(|b| b.is_ascii_hexdigit()),
            "token {token:?}"
        );
        ui.token = token.to_owned();
        ui.url = url.to_owned();
        Ok(ui)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then waits (bounded) for it to exit.
    fn terminate(&mut self) -> anyhow::Result<std::process::ExitStatus> {
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()?;
        wait_for("ringvault ui to exit", STEP, || {
            self.child.try_wait().ok().flatten()
        })
    }
}

impl Drop for UiProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running chromedriver in a process group of its own, with a fresh
/// browser profile; the group (chromedriver and any chromium it started)
/// is killed when dropped.
struct Browser {
    child: Child,
    /// Where chromedriver listens.
    url: String,
    /// The browser's `--user-data-dir`.
    profile: PathBuf,
}

impl Browser {
    fn start(driver: &Path, dir: &Path) -> anyhow::Result<Self> {
        use std::os::unix::process::CommandExt;
        let port = free_ports(1)?[0];
        let profile = dir.join("chromium-profile");
        std::fs::create_dir_all(&profile)?;
        let child = Command::new(driver)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(dir.join("chromedriver.log"))?)
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .context("starting chromedriver")?;
        let browser = Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
            profile,
        };
        wait_for("chromedriver to listen", STEP, || {
            TcpStream::connect(("127.0.0.1", port)).ok()
        })?;
        Ok(browser)
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The group our own child leads (process_group(0) made its id the
        // group's); not reaped yet, so the id is still ours.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .status();
        let _ = self.child.wait();
    }
}
