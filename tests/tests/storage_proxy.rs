//! The storage proxy over real HTTP (both listeners on port 0): every manager-facing route
//! through the typed `StorageClient`, path confinement (`..`, absolute paths, symlinks out
//! of the folder), tus upload as the official client drives it (interrupted and resumed),
//! token download of files and of directories as zip, token checks, quota, clone, and the
//! etcd registration the manager discovers proxies by.

use std::collections::BTreeMap;

use futures::StreamExt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bai_core::config::{StorageProxyConfig, StorageVolumeConfig};
use bai_storage::proto::{problem, EntryType};
use bai_storage::token::{TokenClaims, TokenOp, Tokens};
use bai_storage::{ProxyServer, StorageClient, StorageError};
use bai_tests::TestEtcd;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const SECRET: &str = "test-storage-secret";
const JWT_SECRET: &str = "test-storage-jwt-secret";
const VOL: &str = "volume1";

/// One proxy on a private temp directory; stopped and removed on drop.
struct Proxy {
    base: PathBuf,
    volume_root: PathBuf,
    client: StorageClient,
    client_url: String,
    http: reqwest::Client,
    stop: CancellationToken,
    server: Option<ProxyServer>,
}

impl Proxy {
    async fn start() -> Self {
        Self::start_named("local", false).await
    }

    async fn start_named(name: &str, keep_server: bool) -> Self {
        let base =
            std::env::temp_dir().join(format!("bai-storage-test-{}", Uuid::new_v4().simple()));
        // The proxy creates its volume directory (and parents) itself.
        let vol_path = base.join("vfroot").join(VOL);
        let mut volumes = BTreeMap::new();
        volumes.insert(
            VOL.to_string(),
            StorageVolumeConfig {
                backend: "vfs".into(),
                path: vol_path.clone(),
            },
        );
        let cfg = StorageProxyConfig {
            name: name.into(),
            manager_addr: "127.0.0.1:0".into(),
            client_addr: "127.0.0.1:0".into(),
            client_public_url: "http://unused".into(),
            manager_public_url: None,
            secret: SECRET.into(),
            jwt_secret: JWT_SECRET.into(),
            token_ttl_secs: 600,
            register_in_etcd: false,
            volumes,
        };
        let server = ProxyServer::bind(&cfg).await.expect("bind proxy");
        let client = StorageClient::new(&server.manager_url, SECRET).unwrap();
        let client_url = server.client_url.clone();
        let stop = CancellationToken::new();
        let volume_root = std::fs::canonicalize(&vol_path).expect("volume created");
        let server = if keep_server {
            Some(server)
        } else {
            let s = stop.clone();
            tokio::spawn(async move { server.serve(s).await });
            None
        };
        Self {
            base,
            volume_root,
            client,
            client_url,
            http: reqwest::Client::new(),
            stop,
            server,
        }
    }

    fn upload_dir(&self) -> PathBuf {
        self.volume_root.join(".upload")
    }

    fn folder_dir(&self, vfid: Uuid) -> PathBuf {
        let h = vfid.simple().to_string();
        self.volume_root.join(&h[0..2]).join(&h[2..4]).join(&h[4..])
    }

    async fn new_folder(&self, quota: Option<u64>) -> Uuid {
        let vfid = Uuid::new_v4();
        self.client.create_folder(VOL, vfid, quota).await.unwrap();
        vfid
    }

    fn upload_url(&self, token: &str) -> String {
        format!("{}/upload?token={token}", self.client_url)
    }

    fn download_url(&self, token: &str) -> String {
        format!("{}/download?token={token}", self.client_url)
    }

    /// One tus PATCH exactly as aiotusclient sends it.
    async fn patch(&self, token: &str, offset: u64, data: Vec<u8>) -> reqwest::Response {
        self.http
            .patch(self.upload_url(token))
            .header("Tus-Resumable", "1.0.0")
            .header("Upload-Offset", offset.to_string())
            .header("Content-Type", "application/offset+octet-stream")
            .body(data)
            .send()
            .await
            .unwrap()
    }

    async fn head_offset(&self, token: &str) -> u64 {
        let r = self
            .http
            .head(self.upload_url(token))
            .header("Tus-Resumable", "1.0.0")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.headers()["upload-offset"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap()
    }

    /// Uploads `data` to `relpath` in `chunk`-sized PATCHes (no creation request, like the
    /// official client).
    async fn upload(&self, vfid: Uuid, relpath: &str, data: &[u8], chunk: usize) {
        let token = self
            .client
            .create_upload_token(VOL, vfid, relpath, data.len() as u64)
            .await
            .unwrap();
        let mut offset = 0usize;
        while offset < data.len() {
            let end = (offset + chunk).min(data.len());
            let r = self
                .patch(&token, offset as u64, data[offset..end].to_vec())
                .await;
            assert_eq!(r.status(), 204, "{}", r.text().await.unwrap_or_default());
            offset = r.headers()["upload-offset"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            assert_eq!(offset, end);
        }
    }

    async fn download(
        &self,
        vfid: Uuid,
        relpath: &str,
        archive: bool,
    ) -> (Vec<u8>, reqwest::header::HeaderMap) {
        let token = self
            .client
            .create_download_token(VOL, vfid, relpath, archive)
            .await
            .unwrap();
        let r = self
            .http
            .get(self.download_url(&token))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let headers = r.headers().clone();
        (r.bytes().await.unwrap().to_vec(), headers)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.cancel();
        let _ = std::fs::remove_dir_all(&self.base);
    }
}

/// Deterministic pseudo-random bytes (xorshift), so a corrupted offset shows up.
fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn assert_proxy_err(e: StorageError, status: u16, kind: &str) {
    assert_eq!(e.status(), Some(status), "{e}");
    assert_eq!(e.problem_type(), Some(kind), "{e}");
    assert!(e.is_client_error());
}

fn dir_is_empty(p: &Path) -> bool {
    std::fs::read_dir(p)
        .map(|mut d| d.next().is_none())
        .unwrap_or(true)
}

#[tokio::test]
async fn manager_routes_end_to_end() {
    let px = Proxy::start().await;
    let c = &px.client;

    // Volumes and usage.
    let vols = c.volumes().await.unwrap();
    assert_eq!(vols.len(), 1);
    assert_eq!(vols[0].name, VOL);
    assert_eq!(vols[0].backend, "vfs");
    assert!(vols[0].capabilities.iter().any(|c| c == "file-ops"));
    let vu = c.volume_usage(VOL).await.unwrap();
    assert!(vu.capacity_bytes > 0 && vu.used_bytes <= vu.capacity_bytes);

    // `/metrics` answers without the secret, with the volume's gauges read on scrape.
    let text = px
        .http
        .get(format!("{}/metrics", c.base_url()))
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains(&format!(
            "bai_storage_volume_capacity_bytes{{volume=\"{VOL}\"}}"
        )),
        "{text}"
    );

    // Create (idempotent), mount path in the original's layout.
    let vfid = px.new_folder(None).await;
    c.create_folder(VOL, vfid, None).await.unwrap();
    let mount = c.mount_path(VOL, vfid).await.unwrap();
    assert_eq!(PathBuf::from(&mount), px.folder_dir(vfid));
    assert!(Path::new(&mount).is_dir());

    // mkdir: plain, parents, exist_ok, conflict, missing parent.
    c.mkdir(VOL, vfid, "a", false, false).await.unwrap();
    c.mkdir(VOL, vfid, "a/b/c", true, false).await.unwrap();
    c.mkdir(VOL, vfid, "a", false, true).await.unwrap();
    assert_proxy_err(
        c.mkdir(VOL, vfid, "a", false, false).await.unwrap_err(),
        409,
        problem::ALREADY_EXISTS,
    );
    assert_proxy_err(
        c.mkdir(VOL, vfid, "x/y", false, false).await.unwrap_err(),
        404,
        problem::FILE_NOT_FOUND,
    );

    // Files through tus, then list with stat.
    px.upload(vfid, "a/hello.txt", b"hello world", 4).await;
    px.upload(vfid, "top.bin", &pattern(1000, 1), 1 << 20).await;
    let items = c.list_files(VOL, vfid, "").await.unwrap();
    let names: Vec<_> = items.iter().map(|i| (i.name.as_str(), i.kind)).collect();
    assert_eq!(
        names,
        vec![("a", EntryType::Directory), ("top.bin", EntryType::File)]
    );
    let top = &items[1];
    assert_eq!(top.stat.size, 1000);
    assert_eq!(top.stat.mode & 0o170000, 0o100000);
    assert!(top.stat.modified.timestamp() > 0);
    let a = c.list_files(VOL, vfid, "a").await.unwrap();
    assert_eq!(a.len(), 2);
    // The JSON on the wire: ISO8601 timestamps, upper-case types.
    let raw: serde_json::Value = reqwest::Client::new()
        .post(format!("{}/folder/file/list", c.base_url()))
        .header("X-BackendAI-Storage-Auth-Token", SECRET)
        .json(&serde_json::json!({"volume": VOL, "vfid": vfid, "relpath": "a"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let first = &raw["items"][0];
    assert_eq!(first["type"], "DIRECTORY");
    assert!(
        chrono::DateTime::parse_from_rfc3339(first["stat"]["modified"].as_str().unwrap()).is_ok()
    );

    // Usage.
    let fu = c.folder_usage(VOL, vfid).await.unwrap();
    assert_eq!(fu.file_count, 2);
    assert_eq!(fu.used_bytes, 1011);

    // Rename (same directory; is_dir checked; no overwrite; no path in the new name).
    c.rename_file(VOL, vfid, "top.bin", "renamed.bin", false)
        .await
        .unwrap();
    assert!(px.folder_dir(vfid).join("renamed.bin").is_file());
    assert_proxy_err(
        c.rename_file(VOL, vfid, "renamed.bin", "x", true)
            .await
            .unwrap_err(),
        400,
        problem::INVALID_PARAMS,
    );
    assert_proxy_err(
        c.rename_file(VOL, vfid, "renamed.bin", "a", false)
            .await
            .unwrap_err(),
        409,
        problem::ALREADY_EXISTS,
    );
    c.rename_file(VOL, vfid, "a/b", "bb", true).await.unwrap();
    assert!(px.folder_dir(vfid).join("a/bb/c").is_dir());

    // Move: to a new name, and into an existing directory.
    c.move_file(VOL, vfid, "renamed.bin", "moved.bin")
        .await
        .unwrap();
    c.move_file(VOL, vfid, "moved.bin", "a/bb").await.unwrap();
    assert!(px.folder_dir(vfid).join("a/bb/moved.bin").is_file());
    assert_proxy_err(
        c.move_file(VOL, vfid, "a", "a/bb").await.unwrap_err(),
        400,
        problem::INVALID_PARAMS,
    );
    assert_proxy_err(
        c.move_file(VOL, vfid, "nope", "x").await.unwrap_err(),
        404,
        problem::FILE_NOT_FOUND,
    );

    // Delete: non-recursive on a non-empty directory fails; recursive works; missing is fine.
    assert_proxy_err(
        c.delete_files(VOL, vfid, &["a".into()], false)
            .await
            .unwrap_err(),
        400,
        problem::INVALID_PARAMS,
    );
    c.delete_files(VOL, vfid, &["a/hello.txt".into(), "gone".into()], false)
        .await
        .unwrap();
    assert!(!px.folder_dir(vfid).join("a/hello.txt").exists());
    c.delete_files(VOL, vfid, &["a".into()], true)
        .await
        .unwrap();
    assert!(dir_is_empty(&px.volume_root.join(".trash")));
    assert!(c.list_files(VOL, vfid, "").await.unwrap().is_empty());
    assert_proxy_err(
        c.delete_files(VOL, vfid, &["".into()], true)
            .await
            .unwrap_err(),
        400,
        problem::INVALID_PATH,
    );

    // Zero-byte upload: the official client sends no PATCH at all, the file must exist.
    c.create_upload_token(VOL, vfid, "empty.txt", 0)
        .await
        .unwrap();
    assert_eq!(
        std::fs::metadata(px.folder_dir(vfid).join("empty.txt"))
            .unwrap()
            .len(),
        0
    );

    // Download token for a missing file: 404 up front.
    assert_proxy_err(
        c.create_download_token(VOL, vfid, "missing", false)
            .await
            .unwrap_err(),
        404,
        problem::FILE_NOT_FOUND,
    );

    // Delete folder (idempotent), then the folder is gone for every route.
    c.delete_folder(VOL, vfid).await.unwrap();
    c.delete_folder(VOL, vfid).await.unwrap();
    assert!(!px.folder_dir(vfid).exists());
    let e = c.folder_usage(VOL, vfid).await.unwrap_err();
    assert_proxy_err(e.clone(), 404, problem::VFOLDER_NOT_FOUND);
    assert!(e.is_not_found());
    assert_proxy_err(
        c.mount_path(VOL, vfid).await.unwrap_err(),
        404,
        problem::VFOLDER_NOT_FOUND,
    );

    // Unknown volume, wrong secret, bad body.
    assert_proxy_err(
        c.volume_usage("nope").await.unwrap_err(),
        404,
        problem::NO_SUCH_VOLUME,
    );
    let wrong = StorageClient::new(c.base_url(), "wrong-secret").unwrap();
    assert_proxy_err(
        wrong.volumes().await.unwrap_err(),
        401,
        problem::UNAUTHORIZED,
    );
    let r = reqwest::Client::new()
        .post(format!("{}/folder/create", c.base_url()))
        .header("X-BackendAI-Storage-Auth-Token", SECRET)
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(r.headers()["content-type"], "application/problem+json");

    // Unreachable proxy: a transport error, not a client error.
    let dead = StorageClient::new("http://127.0.0.1:9", SECRET).unwrap();
    let e = dead.volumes().await.unwrap_err();
    assert!(matches!(e, StorageError::Unreachable { .. }));
    assert!(!e.is_client_error());
}

#[tokio::test]
async fn paths_are_confined_to_the_folder() {
    let px = Proxy::start().await;
    let c = &px.client;
    let vfid = px.new_folder(None).await;
    let folder = px.folder_dir(vfid);

    // Outside the folder: a directory with a secret, and another folder on the volume.
    let outside = px.base.join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("secret.txt"), b"top secret").unwrap();
    let other = px.new_folder(None).await;
    std::fs::write(px.folder_dir(other).join("neighbour.txt"), b"not yours").unwrap();
    std::os::unix::fs::symlink(&outside, folder.join("link_out")).unwrap();
    std::os::unix::fs::symlink(outside.join("secret.txt"), folder.join("file_out")).unwrap();
    std::os::unix::fs::symlink("../../../../outside", folder.join("rel_out")).unwrap();
    // A link that stays inside is fine.
    std::fs::create_dir(folder.join("inner")).unwrap();
    std::fs::write(folder.join("inner/ok.txt"), b"ok").unwrap();
    std::os::unix::fs::symlink("inner", folder.join("link_in")).unwrap();

    let bad_paths = [
        "../x",
        "a/../../x",
        "/etc/passwd",
        "/",
        "link_out",
        "link_out/secret.txt",
        "file_out",
        "rel_out/secret.txt",
        "link_out/new",
    ];
    for p in bad_paths {
        let is_invalid = |e: StorageError| {
            assert_eq!(e.status(), Some(400), "{p}: {e}");
            assert_eq!(e.problem_type(), Some(problem::INVALID_PATH), "{p}: {e}");
        };
        // Reads.
        if p != "link_out/new" {
            is_invalid(
                c.create_download_token(VOL, vfid, p, false)
                    .await
                    .unwrap_err(),
            );
            is_invalid(c.list_files(VOL, vfid, p).await.unwrap_err());
        }
        // Writes.
        if !matches!(p, "link_out" | "file_out") {
            is_invalid(c.mkdir(VOL, vfid, p, true, true).await.unwrap_err());
            is_invalid(c.create_upload_token(VOL, vfid, p, 3).await.unwrap_err());
            is_invalid(c.move_file(VOL, vfid, "inner/ok.txt", p).await.unwrap_err());
            is_invalid(
                c.delete_files(VOL, vfid, &[p.into()], true)
                    .await
                    .unwrap_err(),
            );
        }
    }
    for name in ["../x", "a/b", "..", ".", ""] {
        let e = c
            .rename_file(VOL, vfid, "inner/ok.txt", name, false)
            .await
            .unwrap_err();
        assert_eq!(e.problem_type(), Some(problem::INVALID_PATH), "{name}: {e}");
    }
    let e = c.move_file(VOL, vfid, "../../x", "y").await.unwrap_err();
    assert_eq!(e.problem_type(), Some(problem::INVALID_PATH));

    // Inside links work for reads.
    let (body, _) = px.download(vfid, "link_in/ok.txt", false).await;
    assert_eq!(body, b"ok");
    assert_eq!(c.list_files(VOL, vfid, "link_in").await.unwrap().len(), 1);

    // Uploading onto a link that points outside replaces the link, never writes through.
    px.upload(vfid, "file_out", b"overwritten", 1 << 20).await;
    assert_eq!(
        std::fs::read(outside.join("secret.txt")).unwrap(),
        b"top secret"
    );
    assert_eq!(
        std::fs::read(folder.join("file_out")).unwrap(),
        b"overwritten"
    );
    assert!(!std::fs::symlink_metadata(folder.join("file_out"))
        .unwrap()
        .file_type()
        .is_symlink());

    // Deleting a link removes the link only.
    c.delete_files(VOL, vfid, &["link_out".into()], true)
        .await
        .unwrap();
    assert!(std::fs::symlink_metadata(folder.join("link_out")).is_err());
    assert_eq!(
        std::fs::read(outside.join("secret.txt")).unwrap(),
        b"top secret"
    );

    // A directory archive leaves out links (rel_out points outside).
    let (zip_bytes, _) = px.download(vfid, "", true).await;
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(zip_bytes)).unwrap();
    let names: Vec<String> = zip.file_names().map(String::from).collect();
    assert!(
        !names
            .iter()
            .any(|n| n.contains("rel_out") || n.contains("link_in")),
        "{names:?}"
    );
    for i in 0..zip.len() {
        let mut f = zip.by_index(i).unwrap();
        let mut s = Vec::new();
        f.read_to_end(&mut s).unwrap();
        assert_ne!(s, b"top secret");
    }

    // Nothing was created or changed outside; the neighbour folder is untouched.
    let outside_names: Vec<_> = std::fs::read_dir(&outside)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(outside_names, vec![std::ffi::OsString::from("secret.txt")]);
    assert_eq!(
        std::fs::read(px.folder_dir(other).join("neighbour.txt")).unwrap(),
        b"not yours"
    );
    assert!(!px.volume_root.join("x").exists());
    assert!(!px.base.join("x").exists());
}

#[tokio::test]
async fn tus_upload_interrupted_resumed_and_downloaded_back() {
    let px = Proxy::start().await;
    let vfid = px.new_folder(None).await;
    const MIB: usize = 1 << 20;
    let data = pattern(5 * MIB + 12345, 42);
    let token = px
        .client
        .create_upload_token(VOL, vfid, "dir/sub/big.bin", data.len() as u64)
        .await
        .unwrap();

    // OPTIONS advertises tus 1.0.
    let r = px
        .http
        .request(reqwest::Method::OPTIONS, px.upload_url(&token))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    assert_eq!(r.headers()["tus-resumable"], "1.0.0");
    assert!(r.headers()["tus-version"]
        .to_str()
        .unwrap()
        .contains("1.0.0"));
    // HEAD before anything: offset 0, length from the token.
    let r = px.http.head(px.upload_url(&token)).send().await.unwrap();
    assert_eq!(r.headers()["upload-offset"], "0");
    assert_eq!(
        r.headers()["upload-length"],
        data.len().to_string().as_str()
    );

    // First chunk as aiotusclient sends it: PATCH straight away at offset 0.
    let r = px.patch(&token, 0, data[..MIB].to_vec()).await;
    assert_eq!(r.status(), 204);
    assert_eq!(r.headers()["upload-offset"], MIB.to_string().as_str());
    assert_eq!(r.headers()["tus-resumable"], "1.0.0");

    // A wrong offset is refused with the real one.
    let r = px.patch(&token, 7, vec![0; 10]).await;
    assert_eq!(r.status(), 409);
    assert_eq!(r.headers()["upload-offset"], MIB.to_string().as_str());
    // Wrong content type is refused.
    let r = px
        .http
        .patch(px.upload_url(&token))
        .header("Upload-Offset", MIB.to_string())
        .header("Content-Type", "application/octet-stream")
        .body(vec![0u8; 10])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);

    // Interrupted chunk: half a MiB arrives, then the client goes away mid-request.
    let part = data[MIB..MIB + MIB / 2].to_vec();
    let stream = futures::stream::iter(vec![Ok::<_, std::io::Error>(bytes::Bytes::from(part))])
        .chain(futures::stream::pending());
    let req = px
        .http
        .patch(px.upload_url(&token))
        .header("Tus-Resumable", "1.0.0")
        .header("Upload-Offset", MIB.to_string())
        .header("Content-Type", "application/offset+octet-stream")
        .header("Content-Length", MIB.to_string())
        .body(reqwest::Body::wrap_stream(stream))
        .send();
    let stalled = tokio::spawn(req);
    // HEAD does not wait for the running PATCH: poll until the half chunk is stored.
    let stored = bai_tests::eventually(Duration::from_secs(10), || async {
        (px.head_offset(&token).await == (MIB + MIB / 2) as u64).then_some(())
    })
    .await;
    assert!(
        stored.is_some(),
        "the interrupted chunk's bytes were not kept"
    );
    stalled.abort();
    let _ = stalled.await;
    // Nothing is in the folder yet.
    assert!(!px.folder_dir(vfid).join("dir").exists());

    // Resume like a tus client: ask the offset, continue from there in chunks. (A PATCH
    // arriving before the server noticed the broken connection waits for the upload lock.)
    let mut offset = px.head_offset(&token).await as usize;
    assert_eq!(offset, MIB + MIB / 2);
    while offset < data.len() {
        let end = (offset + 2 * MIB).min(data.len());
        let r = px
            .patch(&token, offset as u64, data[offset..end].to_vec())
            .await;
        assert_eq!(r.status(), 204);
        offset = end;
    }

    // Complete: the file is in place, the temp area is empty.
    let on_disk = std::fs::read(px.folder_dir(vfid).join("dir/sub/big.bin")).unwrap();
    assert!(on_disk == data, "uploaded bytes differ");
    assert!(dir_is_empty(&px.upload_dir()));

    // Download it back, byte for byte, with Content-Length and Content-Disposition.
    let (body, headers) = px.download(vfid, "dir/sub/big.bin", false).await;
    assert_eq!(headers["content-length"], data.len().to_string().as_str());
    assert!(headers["content-disposition"]
        .to_str()
        .unwrap()
        .contains("big.bin"));
    assert!(body == data, "downloaded bytes differ");
}

#[tokio::test]
async fn directory_download_is_a_zip() {
    let px = Proxy::start().await;
    let vfid = px.new_folder(None).await;
    px.upload(vfid, "d/a.txt", b"alpha", 1 << 20).await;
    px.upload(vfid, "d/sub/b.bin", &pattern(300_000, 7), 100_000)
        .await;
    px.client
        .mkdir(VOL, vfid, "d/empty", false, false)
        .await
        .unwrap();
    px.upload(vfid, "outside-d.txt", b"not in the archive", 1 << 20)
        .await;

    for archive in [true, false] {
        let (body, headers) = px.download(vfid, "d", archive).await;
        assert_eq!(headers["content-type"], "application/zip");
        assert_eq!(headers["content-length"], body.len().to_string().as_str());
        assert!(headers["content-disposition"]
            .to_str()
            .unwrap()
            .contains("d.zip"));
        let mut zip = zip::ZipArchive::new(std::io::Cursor::new(body)).unwrap();
        let mut names: Vec<String> = zip.file_names().map(String::from).collect();
        names.sort();
        assert_eq!(names, vec!["a.txt", "empty/", "sub/", "sub/b.bin"]);
        let mut s = Vec::new();
        zip.by_name("a.txt").unwrap().read_to_end(&mut s).unwrap();
        assert_eq!(s, b"alpha");
        let mut s = Vec::new();
        zip.by_name("sub/b.bin")
            .unwrap()
            .read_to_end(&mut s)
            .unwrap();
        assert!(s == pattern(300_000, 7));
    }
    // The whole folder too; the anonymous temp file leaves nothing behind.
    let (body, _) = px.download(vfid, ".", true).await;
    let zip = zip::ZipArchive::new(std::io::Cursor::new(body)).unwrap();
    assert!(zip.file_names().any(|n| n == "outside-d.txt"));
    assert!(dir_is_empty(&px.upload_dir()));
}

#[tokio::test]
async fn bad_expired_and_wrong_scope_tokens_are_rejected() {
    let px = Proxy::start().await;
    let vfid = px.new_folder(None).await;
    px.upload(vfid, "f.txt", b"data", 1 << 20).await;
    let down = px
        .client
        .create_download_token(VOL, vfid, "f.txt", false)
        .await
        .unwrap();
    let up = px
        .client
        .create_upload_token(VOL, vfid, "g.txt", 4)
        .await
        .unwrap();

    let now = chrono::Utc::now().timestamp();
    let claims = |op, exp| TokenClaims {
        op,
        volume: VOL.into(),
        vfid,
        relpath: "f.txt".into(),
        size: 4,
        archive: false,
        session: Uuid::new_v4(),
        iat: now - 7200,
        exp,
    };
    let ours = Tokens::new(JWT_SECRET, Duration::from_secs(60));
    let expired_down = ours.sign(&claims(TokenOp::Download, now - 3600)).unwrap();
    let expired_up = ours.sign(&claims(TokenOp::Upload, now - 3600)).unwrap();
    let foreign = Tokens::new("someone-elses-secret", Duration::from_secs(60));
    let forged_down = foreign
        .sign(&claims(TokenOp::Download, now + 3600))
        .unwrap();
    let forged_up = foreign.sign(&claims(TokenOp::Upload, now + 3600)).unwrap();

    // Downloads: wrong operation, expired, forged, garbage, missing.
    for t in [
        up.as_str(),
        &expired_down,
        &forged_down,
        "garbage",
        "a.b.c",
        "",
    ] {
        let r = px.http.get(px.download_url(t)).send().await.unwrap();
        assert_eq!(r.status(), 401, "token {t:?}");
        let p: serde_json::Value = r.json().await.unwrap();
        assert_eq!(p["type"], problem::INVALID_TOKEN);
    }
    let r = px
        .http
        .get(format!("{}/download", px.client_url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // Uploads: wrong operation, expired, forged; nothing written.
    for t in [down.as_str(), &expired_up, &forged_up, "garbage"] {
        let r = px.patch(t, 0, b"evil".to_vec()).await;
        assert_eq!(r.status(), 401, "token {t:?}");
        let r = px.http.head(px.upload_url(t)).send().await.unwrap();
        assert_eq!(r.status(), 401, "token {t:?}");
    }
    assert!(dir_is_empty(&px.upload_dir()));
    assert_eq!(
        std::fs::read(px.folder_dir(vfid).join("f.txt")).unwrap(),
        b"data"
    );
    assert!(!px.folder_dir(vfid).join("g.txt").exists());
    // A valid token still works (and only for its own path).
    let r = px.http.get(px.download_url(&down)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().as_ref(), b"data");
    let r = px.patch(&up, 0, b"good".to_vec()).await;
    assert_eq!(r.status(), 204);
    assert_eq!(
        std::fs::read(px.folder_dir(vfid).join("g.txt")).unwrap(),
        b"good"
    );
}

#[tokio::test]
async fn quota_exceeded_is_rejected_and_leaves_nothing() {
    let px = Proxy::start().await;
    let quota = 1_000_000u64;
    let vfid = px.new_folder(Some(quota)).await;
    let folder = px.folder_dir(vfid);

    // Up front: a request larger than the quota.
    let e = px
        .client
        .create_upload_token(VOL, vfid, "big.bin", quota + 1)
        .await
        .unwrap_err();
    assert_proxy_err(e, 413, problem::QUOTA_EXCEEDED);
    assert!(dir_is_empty(&folder));

    // While writing: two uploads that each fit, but not together.
    let a = px
        .client
        .create_upload_token(VOL, vfid, "a.bin", 600_000)
        .await
        .unwrap();
    let b = px
        .client
        .create_upload_token(VOL, vfid, "b.bin", 600_000)
        .await
        .unwrap();
    let r = px.patch(&b, 0, pattern(100_000, 3)).await;
    assert_eq!(r.status(), 204);
    assert!(!dir_is_empty(&px.upload_dir()));
    let r = px.patch(&a, 0, pattern(600_000, 4)).await;
    assert_eq!(r.status(), 204);
    assert!(folder.join("a.bin").is_file());
    let r = px.patch(&b, 100_000, pattern(500_000, 5)).await;
    assert_eq!(r.status(), 413);
    let p: serde_json::Value = r.json().await.unwrap();
    assert_eq!(p["type"], problem::QUOTA_EXCEEDED);
    assert!(!folder.join("b.bin").exists());
    assert!(dir_is_empty(&px.upload_dir()), "partial upload left behind");
    // Up front again now that a.bin is there.
    let e = px
        .client
        .create_upload_token(VOL, vfid, "c.bin", 500_000)
        .await
        .unwrap_err();
    assert_proxy_err(e, 413, problem::QUOTA_EXCEEDED);
    // Overwriting a.bin with a same-sized file fits (its old size is freed).
    px.client
        .create_upload_token(VOL, vfid, "a.bin", 600_000)
        .await
        .unwrap();

    // More bytes than the token declares: refused, the earlier bytes kept.
    let t = px
        .client
        .create_upload_token(VOL, vfid, "d.bin", 1000)
        .await
        .unwrap();
    assert_eq!(px.patch(&t, 0, vec![1; 500]).await.status(), 204);
    assert_eq!(px.patch(&t, 500, vec![1; 501]).await.status(), 413);
    assert_eq!(px.head_offset(&t).await, 500);
    assert_eq!(
        px.client.folder_usage(VOL, vfid).await.unwrap().used_bytes,
        600_000
    );
}

#[tokio::test]
async fn clone_copies_a_tree() {
    let px = Proxy::start().await;
    let src = px.new_folder(Some(10_000_000)).await;
    px.upload(src, "x/y/z.bin", &pattern(200_000, 9), 1 << 20)
        .await;
    px.upload(src, "top.txt", b"top", 1 << 20).await;
    px.client
        .mkdir(VOL, src, "x/empty", false, false)
        .await
        .unwrap();
    std::os::unix::fs::symlink("top.txt", px.folder_dir(src).join("link")).unwrap();

    let dst = Uuid::new_v4();
    px.client.clone_folder(VOL, src, dst).await.unwrap();
    let d = px.folder_dir(dst);
    assert_eq!(
        std::fs::read(d.join("x/y/z.bin")).unwrap(),
        pattern(200_000, 9)
    );
    assert_eq!(std::fs::read(d.join("top.txt")).unwrap(), b"top");
    assert!(d.join("x/empty").is_dir());
    assert_eq!(
        std::fs::read_link(d.join("link")).unwrap(),
        PathBuf::from("top.txt")
    );
    assert_eq!(
        px.client.folder_usage(VOL, dst).await.unwrap(),
        px.client.folder_usage(VOL, src).await.unwrap()
    );
    // Independent copies.
    px.client
        .delete_files(VOL, src, &["x".into()], true)
        .await
        .unwrap();
    assert!(d.join("x/y/z.bin").is_file());
    // Cloning onto an existing folder, or from a missing one, is refused.
    assert_proxy_err(
        px.client.clone_folder(VOL, src, dst).await.unwrap_err(),
        409,
        problem::ALREADY_EXISTS,
    );
    assert_proxy_err(
        px.client
            .clone_folder(VOL, Uuid::new_v4(), Uuid::new_v4())
            .await
            .unwrap_err(),
        404,
        problem::VFOLDER_NOT_FOUND,
    );
}

#[tokio::test]
async fn registers_in_etcd_for_discovery() {
    let etcd = TestEtcd::new().await;
    let mut px = Proxy::start_named("px1", true).await;
    let server = px.server.take().unwrap();
    server.register(&etcd.etcd).await.unwrap();
    let s = px.stop.clone();
    let manager_url = server.manager_url.clone();
    tokio::spawn(async move { server.serve(s).await });

    let proxies = bai_storage::client::discover_proxies(&etcd.etcd)
        .await
        .unwrap();
    assert_eq!(proxies.len(), 1);
    let p = &proxies[0];
    assert_eq!(p.name, "px1");
    assert_eq!(p.manager_api, manager_url);
    assert_eq!(p.client_api, px.client_url);
    assert_eq!(p.secret, SECRET);
    assert_eq!(p.upload_url(), format!("{}/upload", px.client_url));
    assert_eq!(
        bai_storage::client::default_host(&etcd.etcd)
            .await
            .unwrap()
            .as_deref(),
        Some("px1:volume1")
    );
    // The discovered client works.
    let vols = p.client().unwrap().volumes().await.unwrap();
    assert_eq!(vols[0].name, VOL);
    assert_eq!(
        bai_storage::client::parse_host("px1:volume1").unwrap(),
        ("px1", "volume1")
    );
    assert!(bai_storage::client::parse_host("novolume").is_err());

    // A second proxy registers beside it but leaves the default host alone.
    let mut px2 = Proxy::start_named("px2", true).await;
    let server2 = px2.server.take().unwrap();
    server2.register(&etcd.etcd).await.unwrap();
    let names: Vec<_> = bai_storage::client::discover_proxies(&etcd.etcd)
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.name)
        .collect();
    assert_eq!(names, vec!["px1", "px2"]);
    assert_eq!(
        bai_storage::client::default_host(&etcd.etcd)
            .await
            .unwrap()
            .as_deref(),
        Some("px1:volume1")
    );
    drop(px);
    drop(px2);
}

#[test]
#[allow(clippy::result_large_err)] // figment's Jail API returns its own large error type
fn storage_proxy_config_from_manager_toml_and_environment() {
    figment::Jail::expect_with(|jail| {
        jail.set_env("BAI_STORAGE_PROXY__SECRET", "from-env");
        jail.set_env(
            "BAI_STORAGE_PROXY__CLIENT_PUBLIC_URL",
            "http://files.example:6022",
        );
        let cfg =
            bai_core::Config::load(Some(&bai_tests::workspace_root().join("ops/manager.toml")))
                .map_err(|e| e.to_string())?;
        let sp = &cfg.storage_proxy;
        assert_eq!(sp.secret, "from-env");
        assert_eq!(sp.client_public_url, "http://files.example:6022");
        assert_eq!(sp.name, "local");
        assert_eq!(sp.manager_addr, "127.0.0.1:6021");
        assert_eq!(sp.volumes["volume1"].backend, "vfs");
        Ok(())
    });
    // An unknown backend is a configuration error, not a start-up surprise.
    figment::Jail::expect_with(|jail| {
        jail.create_file(
            "m.toml",
            "[storage_proxy.volumes.v]\nbackend = \"xfs\"\npath = \"/tmp/x\"\n",
        )?;
        let err = bai_core::Config::load(Some(Path::new("m.toml"))).unwrap_err();
        assert!(
            err.to_string().contains("storage_proxy.volumes.v.backend"),
            "{err}"
        );
        Ok(())
    });
}

/// The official client's own upload/download code paths, if the 21.3.6 client is installed
/// (`bash /work/shared/conformance/install-client.sh`): aiotusclient exactly as
/// `VFolder.upload` drives it (16 MiB chunks, PATCH without creation), and an aiohttp GET
/// reading `Content-Length` as `VFolder.download` does, for a file and a directory.
#[tokio::test]
async fn official_client_uploads_and_downloads() {
    let home = std::env::var("HOME").unwrap_or_default();
    let python = PathBuf::from(format!("{home}/.cache/backend.ai-client-21.3.6/bin/python"));
    if !python.exists() {
        eprintln!(
            "skipped: the official client is not installed at {}",
            python.display()
        );
        return;
    }
    let px = Proxy::start().await;
    let vfid = px.new_folder(None).await;
    let data = pattern(20 * 1024 * 1024 + 777, 11);
    let src = px.base.join("src.bin");
    std::fs::write(&src, &data).unwrap();
    let up = px
        .client
        .create_upload_token(VOL, vfid, "dir/big.bin", data.len() as u64)
        .await
        .unwrap();
    let script = px.base.join("client.py");
    std::fs::write(
        &script,
        r#"
import asyncio, sys
import aiohttp
from yarl import URL
from aiotusclient import client

async def upload(url, token, path):
    # ai.backend.client.func.vfolder.VFolder.upload, minus the manager round trip.
    upload_url = URL(url).with_query({'token': token})
    uploader = client.TusClient().async_uploader(
        file_stream=open(path, 'rb'), url=upload_url,
        upload_checksum=False, chunk_size=16 * (2**20))
    await uploader.upload()

async def download(url, token, out):
    # ai.backend.client.func.vfolder.VFolder.download, minus the manager round trip.
    download_url = URL(url).with_query({'token': token})
    async with aiohttp.ClientSession() as s:
        async with s.get(download_url, ssl=False) as resp:
            assert resp.status == 200, resp.status
            size = int(resp.headers['Content-Length'])
            got = 0
            with open(out, 'wb') as f:
                while True:
                    chunk = await resp.content.read(16 * 2**20)
                    if not chunk:
                        break
                    got += len(chunk)
                    f.write(chunk)
            assert got == size, (got, size)

op, url, token, path = sys.argv[1:5]
asyncio.run(upload(url, token, path) if op == 'up' else download(url, token, path))
"#,
    )
    .unwrap();
    let run = |op: &str, url: String, token: String, path: PathBuf| {
        let python = python.clone();
        let script = script.clone();
        let op = op.to_string();
        async move {
            let out = tokio::process::Command::new(&python)
                .arg(&script)
                .arg(op)
                .arg(url)
                .arg(token)
                .arg(path)
                .output()
                .await
                .expect("run python");
            assert!(
                out.status.success(),
                "client failed: {}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    };
    run("up", format!("{}/upload", px.client_url), up, src.clone()).await;
    assert!(std::fs::read(px.folder_dir(vfid).join("dir/big.bin")).unwrap() == data);
    assert!(dir_is_empty(&px.upload_dir()));

    let down = px
        .client
        .create_download_token(VOL, vfid, "dir/big.bin", false)
        .await
        .unwrap();
    let out = px.base.join("out.bin");
    run(
        "down",
        format!("{}/download", px.client_url),
        down,
        out.clone(),
    )
    .await;
    assert!(std::fs::read(&out).unwrap() == data);

    let down = px
        .client
        .create_download_token(VOL, vfid, "dir", true)
        .await
        .unwrap();
    let out = px.base.join("out.zip");
    run(
        "down",
        format!("{}/download", px.client_url),
        down,
        out.clone(),
    )
    .await;
    let mut zip = zip::ZipArchive::new(std::fs::File::open(&out).unwrap()).unwrap();
    let mut s = Vec::new();
    zip.by_name("big.bin").unwrap().read_to_end(&mut s).unwrap();
    assert!(s == data);
}
