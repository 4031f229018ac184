//! `unclip serve` over loopback: the official `openai` Python client, back-pressure under load,
//! cancellation, timeouts, graceful shutdown and the error objects. Every loop is bounded in
//! count and time.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::server::Server;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn fast(prompt: &str, seed: u64) -> serde_json::Value {
    serde_json::json!({
        "prompt": prompt, "n": 1, "size": "64x64", "response_format": "b64_json",
        "seed": seed, "prior_steps": 2, "decoder_steps": 2,
    })
}

fn is_png(b64: &str) -> bool {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .is_ok_and(|bytes| image::load_from_memory(&bytes).is_ok())
}

/// The Python interpreter with `openai` installed: UNCLIP_TEST_PYTHON, else the project's
/// `.venv-test` that scripts/test makes.
fn python() -> std::path::PathBuf {
    if let Some(path) = std::env::var_os("UNCLIP_TEST_PYTHON") {
        return path.into();
    }
    let venv = common::repo().join(".venv-test/bin/python");
    assert!(
        venv.exists(),
        "no Python with `openai`: run scripts/test (it makes .venv-test) or set UNCLIP_TEST_PYTHON"
    );
    venv
}

#[test]
fn official_openai_client() {
    let server = Server::start(&["--api-key", "test-key"]);
    let image = common::repo().join("tests/fixtures/vision/orient_1.png");
    common::run_ok(
        Command::new(python())
            .arg(common::repo().join("tests/openai/client_test.py"))
            .arg(server.url("/v1"))
            .arg("test-key")
            .arg(image),
    );
}

async fn metric(client: &reqwest::Client, server: &Server, name: &str) -> f64 {
    let text = client
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// 64 clients × 4 requests against a queue of 8: every answer is an image (200) or a 429 with
/// Retry-After; nothing else, and the server stays up. Prints throughput and latency.
#[test]
fn load_is_refused_with_429_never_lost() {
    for max_batch in ["1", "4"] {
        let server = Server::start(&["--max-queue", "8", "--max-batch", max_batch]);
        let rt = runtime();
        let started = Instant::now();
        let results: Vec<(u16, Duration, bool)> = rt.block_on(async {
            let client = reqwest::Client::new();
            let mut tasks = Vec::new();
            for c in 0..64u64 {
                let client = client.clone();
                let url = server.url("/v1/images/generations");
                tasks.push(tokio::spawn(async move {
                    let mut out = Vec::new();
                    for r in 0..4u64 {
                        let sent = Instant::now();
                        let response = client
                            .post(&url)
                            .json(&fast("a red circle", c * 4 + r))
                            .timeout(Duration::from_secs(300))
                            .send()
                            .await
                            .expect("a response");
                        let status = response.status().as_u16();
                        let retry_after = response.headers().contains_key("retry-after");
                        let body: serde_json::Value = response.json().await.unwrap();
                        let ok = match status {
                            200 => body["data"][0]["b64_json"].as_str().is_some_and(is_png),
                            429 => retry_after && body["error"]["code"] == "queue_full",
                            _ => false,
                        };
                        out.push((status, sent.elapsed(), ok));
                    }
                    out
                }));
            }
            let mut all = Vec::new();
            for task in tasks {
                all.extend(task.await.unwrap());
            }
            all
        });
        let wall = started.elapsed().as_secs_f64();
        assert_eq!(results.len(), 256);
        for (status, _, ok) in &results {
            assert!(ok, "status {status} with an unexpected body");
        }
        let mut served: Vec<f64> = results
            .iter()
            .filter(|r| r.0 == 200)
            .map(|r| r.1.as_secs_f64())
            .collect();
        served.sort_by(f64::total_cmp);
        assert!(!served.is_empty(), "some requests are served");
        let refused = results.iter().filter(|r| r.0 == 429).count();
        let pct = |p: f64| served[((served.len() - 1) as f64 * p) as usize];
        eprintln!(
            "max-batch {max_batch}: {} served, {refused} refused (429) in {wall:.1} s; \
             {:.2} images/s; p50 {:.2} s, p95 {:.2} s",
            served.len(),
            served.len() as f64 / wall,
            pct(0.5),
            pct(0.95)
        );
        // Still healthy afterwards.
        let health =
            rt.block_on(async { reqwest::get(server.url("/readyz")).await.unwrap().status() });
        assert_eq!(health, 200);
    }
}

#[test]
fn disconnects_and_timeouts_cancel_work() {
    let server = Server::start(&["--request-timeout", "2"]);
    let rt = runtime();
    rt.block_on(async {
        let client = reqwest::Client::new();
        let mut slow = fast("a slow cat", 1);
        slow["decoder_steps"] = 1000.into();
        slow["size"] = "256x256".into();
        // A client that gives up after 300 ms: its job is cancelled between steps.
        let dropped = client
            .post(server.url("/v1/images/generations"))
            .json(&slow)
            .timeout(Duration::from_millis(300))
            .send()
            .await;
        assert!(dropped.is_err(), "the client timed out");
        let mut cancelled = 0.0;
        for _ in 0..100 {
            cancelled = metric(&client, &server, "unclip_jobs_cancelled_total").await;
            if cancelled >= 1.0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(cancelled, 1.0, "the abandoned job was cancelled");
        // The server's own deadline: 504 with an OpenAI error, and the job cancelled too.
        let response = client
            .post(server.url("/v1/images/generations"))
            .json(&slow)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 504);
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "timeout");
        for _ in 0..100 {
            cancelled = metric(&client, &server, "unclip_jobs_cancelled_total").await;
            if cancelled >= 2.0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(cancelled, 2.0);
        // And the worker is free again.
        let response = client
            .post(server.url("/v1/images/generations"))
            .json(&fast("a quick cat", 2))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    });
}

#[test]
fn sigterm_finishes_accepted_work_then_exits() {
    let mut server = Server::start(&[]);
    let rt = runtime();
    rt.block_on(async {
        let client = reqwest::Client::new();
        let mut long = fast("a patient cat", 3);
        long["decoder_steps"] = 60.into();
        let url = server.url("/v1/images/generations");
        let in_flight = tokio::spawn({
            let client = client.clone();
            async move { client.post(&url).json(&long).send().await }
        });
        tokio::time::sleep(Duration::from_millis(500)).await;
        server.sigterm();
        let response = in_flight
            .await
            .unwrap()
            .expect("the accepted request is answered");
        assert_eq!(response.status(), 200);
        let body: serde_json::Value = response.json().await.unwrap();
        assert!(body["data"][0]["b64_json"].as_str().is_some_and(is_png));
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            assert!(status.success(), "{status}");
            break;
        }
        assert!(Instant::now() < deadline, "the server did not exit");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Nothing listens any more.
    let refused = rt.block_on(async { reqwest::get(server.url("/healthz")).await });
    assert!(refused.is_err());
}

/// SIGTERM under load: of many requests in flight and queued, every one the server accepted gets
/// a whole answer (200 with its PNG, or a complete JSON error such as 429 or 503), none is cut
/// mid-body; requests after the listener closed are refused at connect; the server exits 0.
#[test]
fn sigterm_under_load_answers_every_accepted_request_whole() {
    let mut server = Server::start(&["--max-queue", "4", "--max-batch", "2"]);
    let rt = runtime();
    let (answered, refused) = rt.block_on(async {
        let client = reqwest::Client::new();
        let url = server.url("/v1/images/generations");
        let mut tasks = Vec::new();
        for i in 0..16u64 {
            let mut body = fast("a patient cat", i);
            body["decoder_steps"] = (10 + i as usize % 3 * 10).into();
            let (client, url) = (client.clone(), url.clone());
            tasks.push(tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(40 * i)).await;
                match client.post(&url).json(&body).send().await {
                    // The whole body must arrive and parse, whatever the status.
                    Ok(response) => {
                        let status = response.status().as_u16();
                        let body: serde_json::Value = response
                            .json()
                            .await
                            .unwrap_or_else(|e| panic!("request {i}: a body cut short: {e}"));
                        Some((status, body))
                    }
                    Err(e) => {
                        assert!(e.is_connect() || e.is_request(), "request {i}: {e}");
                        None
                    }
                }
            }));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        server.sigterm();
        let (mut answered, mut refused) = (Vec::new(), 0);
        for task in tasks {
            match task.await.unwrap() {
                Some(answer) => answered.push(answer),
                None => refused += 1,
            }
        }
        (answered, refused)
    });
    let ok = answered.iter().filter(|(status, _)| *status == 200).count();
    assert!(
        ok >= 1,
        "the requests accepted before SIGTERM finish: {answered:?}"
    );
    for (status, body) in &answered {
        match status {
            200 => assert!(body["data"][0]["b64_json"].as_str().is_some_and(is_png)),
            429 | 503 => assert!(body["error"]["message"].as_str().is_some(), "{body}"),
            other => panic!("unexpected status {other}: {body}"),
        }
    }
    eprintln!(
        "{ok} answered 200, {} other answers, {refused} refused at connect",
        answered.len() - ok
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            assert!(status.success(), "{status}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the server did not exit within its grace period"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A bundle file replaced on disk while the server runs: the running server keeps serving from
/// the models it loaded (the same image bytes as before); a restart with `--verify cached`
/// refuses the changed file, naming it.
#[test]
fn a_bundle_file_replaced_while_serving() {
    let tmp = tempfile::tempdir().unwrap();
    let bundle = tmp.path().join("tiny");
    std::fs::create_dir(&bundle).unwrap();
    for entry in std::fs::read_dir(common::tiny_bundle()).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), bundle.join(entry.file_name())).unwrap();
    }
    let cache = tmp.path().join("cache");
    let env = [("XDG_CACHE_HOME", cache.as_path())];
    let flags = ["--verify", "cached", "--graph-cache-dir", "none"];
    let server = Server::start_with(&bundle, &flags, &env);
    let rt = runtime();
    let generate = |server: &Server| {
        rt.block_on(async {
            let response = reqwest::Client::new()
                .post(server.url("/v1/images/generations"))
                .json(&fast("a red circle", 5))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200);
            let body: serde_json::Value = response.json().await.unwrap();
            body["data"][0]["b64_json"].as_str().unwrap().to_string()
        })
    };
    let before = generate(&server);
    // Same size, same inode, other bytes: what a botched copy or bit rot leaves.
    let decoder = bundle.join("decoder.onnx");
    let mut bytes = std::fs::read(&decoder).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&decoder, &bytes).unwrap();
    assert_eq!(
        generate(&server),
        before,
        "the running server serves what it loaded"
    );
    drop(server);
    let restart = Command::new(env!("CARGO_BIN_EXE_unclip"))
        .args(["serve", "--port", "0", "--model"])
        .arg(&bundle)
        .args(flags)
        .env("XDG_CACHE_HOME", &cache)
        .output()
        .unwrap();
    assert_eq!(restart.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&restart.stderr);
    assert!(
        stderr.contains("sha256 mismatch") && stderr.contains("decoder.onnx"),
        "{stderr}"
    );
}

#[test]
fn errors_are_openai_error_objects() {
    let server = Server::start(&["--api-key", "k", "--max-body-mib", "1"]);
    let rt = runtime();
    rt.block_on(async {
        let client = reqwest::Client::new();
        let post = |path: &str| client.post(server.url(path)).bearer_auth("k");
        let check = |status: u16, expected: u16, body: &serde_json::Value, param: Option<&str>| {
            assert_eq!(status, expected, "{body}");
            let error = &body["error"];
            assert!(
                error["message"].as_str().is_some_and(|m| !m.is_empty()),
                "{body}"
            );
            assert!(error["type"].is_string(), "{body}");
            if let Some(param) = param {
                assert_eq!(error["param"], param, "{body}");
            }
        };
        async fn parts(r: reqwest::Response) -> (u16, serde_json::Value) {
            let status = r.status().as_u16();
            (status, r.json().await.unwrap())
        }
        // No key, wrong key.
        let (s, b) = parts(client.get(server.url("/v1/models")).send().await.unwrap()).await;
        check(s, 401, &b, None);
        let (s, b) = parts(
            client
                .get(server.url("/v1/models"))
                .bearer_auth("K")
                .send()
                .await
                .unwrap(),
        )
        .await;
        check(s, 401, &b, None);
        // Health and metrics need no key.
        assert_eq!(
            reqwest::get(server.url("/healthz")).await.unwrap().status(),
            200
        );
        // Bad JSON, missing prompt, bad n, bad size, bad rng, overlong prompt.
        let (s, b) = parts(
            post("/v1/images/generations")
                .header("content-type", "application/json")
                .body("{not json")
                .send()
                .await
                .unwrap(),
        )
        .await;
        check(s, 400, &b, None);
        for (body, param) in [
            (serde_json::json!({"n": 1}), None),
            (serde_json::json!({"prompt": "x", "n": 0}), Some("n")),
            (serde_json::json!({"prompt": "x", "n": 11}), Some("n")),
            (
                serde_json::json!({"prompt": "x", "size": "512x512"}),
                Some("size"),
            ),
            (
                serde_json::json!({"prompt": "x", "rng": "dice"}),
                Some("rng"),
            ),
            (
                serde_json::json!({"prompt": "x".repeat(1001)}),
                Some("prompt"),
            ),
            (
                serde_json::json!({"prompt": "x", "decoder_scheduler": "euler"}),
                Some("decoder_scheduler"),
            ),
            (
                serde_json::json!({"prompt": "x", "model": "dall-e-3"}),
                Some("model"),
            ),
            (serde_json::json!({"prompt": "x", "eta": 0.5}), None),
            (serde_json::json!({"prompt": "x", "decoder_steps": 0}), None),
            (serde_json::json!({"prompt": 5}), None),
            (serde_json::json!({"prompt": "x", "n": "two"}), None),
            (
                serde_json::json!({"prompt": "x", "quality": "hd"}),
                Some("quality"),
            ),
        ] {
            let (s, b) = parts(
                post("/v1/images/generations")
                    .json(&body)
                    .send()
                    .await
                    .unwrap(),
            )
            .await;
            check(s, 400, &b, param);
        }
        // An unknown (e.g. misspelled) field is named, not ignored.
        let (s, b) = parts(
            post("/v1/images/generations")
                .json(&serde_json::json!({"prompt": "x", "decoder_stepz": 3}))
                .send()
                .await
                .unwrap(),
        )
        .await;
        check(s, 400, &b, None);
        assert!(
            b["error"]["message"]
                .as_str()
                .unwrap()
                .contains("decoder_stepz"),
            "{b}"
        );
        // Too large a body: 413 before it is read whole.
        let big = serde_json::json!({"prompt": "x".repeat(2 << 20)});
        let response = post("/v1/images/generations")
            .json(&big)
            .send()
            .await
            .unwrap();
        // The unread rest of the body makes the connection unusable: the server closes it and
        // says so, so keep-alive clients do not send the next request down it.
        assert_eq!(
            response.headers().get("connection").map(|v| v.as_bytes()),
            Some(&b"close"[..])
        );
        let (s, b) = parts(response).await;
        check(s, 413, &b, None);
        // A corrupt upload: 400 naming the image.
        let form = reqwest::multipart::Form::new()
            .part(
                "image",
                reqwest::multipart::Part::bytes(b"not an image".to_vec()).file_name("x.png"),
            )
            .text("n", "1");
        let (s, b) = parts(
            post("/v1/images/variations")
                .multipart(form)
                .send()
                .await
                .unwrap(),
        )
        .await;
        check(s, 400, &b, Some("image"));
        let form = reqwest::multipart::Form::new().text("n", "1");
        let (s, b) = parts(
            post("/v1/images/variations")
                .multipart(form)
                .send()
                .await
                .unwrap(),
        )
        .await;
        check(s, 400, &b, Some("image"));
        // Image embeddings (extension) and a bad embeddings model.
        let png = std::fs::read(common::repo().join("tests/fixtures/vision/orient_1.png")).unwrap();
        let form = reqwest::multipart::Form::new()
            .part(
                "image",
                reqwest::multipart::Part::bytes(png.clone()).file_name("a.png"),
            )
            .part(
                "image",
                reqwest::multipart::Part::bytes(png).file_name("b.png"),
            );
        let (s, b) = parts(
            post("/v1/embeddings/images")
                .multipart(form)
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(s, 200, "{b}");
        assert_eq!(b["data"].as_array().unwrap().len(), 2);
        assert_eq!(b["data"][0]["embedding"], b["data"][1]["embedding"]);
        let (s, b) = parts(
            post("/v1/embeddings")
                .json(&serde_json::json!({"input": "x", "model": "text-embedding-3-small"}))
                .send()
                .await
                .unwrap(),
        )
        .await;
        check(s, 400, &b, Some("model"));
        // Unknown route.
        let (s, b) = parts(client.get(server.url("/v2/nothing")).send().await.unwrap()).await;
        check(s, 404, &b, None);
    });
}

/// A batched request gets exactly the images it gets alone (each job keeps its own seed).
#[test]
fn batching_does_not_change_images() {
    let server = Server::start(&["--max-batch", "4"]);
    let rt = runtime();
    rt.block_on(async {
        let client = reqwest::Client::new();
        let one = |seed| {
            let client = client.clone();
            let url = server.url("/v1/images/generations");
            async move {
                let body: serde_json::Value = client
                    .post(url)
                    .json(&fast("a green square", seed))
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                body["data"][0]["b64_json"].as_str().unwrap().to_string()
            }
        };
        let alone = [one(10).await, one(11).await, one(12).await];
        let together = tokio::join!(one(10), one(11), one(12));
        assert_eq!(alone[0], together.0);
        assert_eq!(alone[1], together.1);
        assert_eq!(alone[2], together.2);
        let batches = metric(&client, &server, "unclip_batch_size_count").await;
        assert!(batches >= 4.0, "{batches}");
    });
}

/// Determinism (same bundle, seed and settings → the same pixels): the library, the CLI at 1 and
/// 2 threads (byte-identical PNGs across runs), and the server agree. The C ABI is held to the
/// library in tests/capi.rs.
#[test]
fn library_cli_threads_and_server_agree() {
    use unclip::pipeline::{no_observer, TextToImage};
    let pipeline = unclip::Pipeline::load(&common::runtime(), common::tiny_bundle()).unwrap();
    let request = TextToImage {
        prompts: vec!["a blue star".into()],
        prior_steps: Some(3),
        decoder_steps: Some(3),
        super_res_steps: vec![2],
        ..Default::default()
    };
    let library = pipeline
        .generate(
            &request,
            &mut unclip::noise::TorchGenerator::new(21),
            &mut no_observer(),
        )
        .unwrap()
        .images
        .remove(0);

    let tmp = tempfile::tempdir().unwrap();
    let mut pngs = Vec::new();
    for (threads, name) in [("1", "a.png"), ("2", "b.png"), ("2", "c.png")] {
        let out = tmp.path().join(name);
        common::run_ok(
            Command::new(env!("CARGO_BIN_EXE_unclip"))
                .args(["-q", "generate", "a blue star", "--model"])
                .arg(common::tiny_bundle())
                .args(["--seed", "21", "--rng", "torch", "--threads", threads])
                .args([
                    "--prior-steps",
                    "3",
                    "--decoder-steps",
                    "3",
                    "--sr-steps",
                    "2",
                    "-o",
                ])
                .arg(&out)
                .env_remove("UNCLIP_MODEL"),
        );
        let bytes = std::fs::read(&out).unwrap();
        let pixels = image::load_from_memory(&bytes).unwrap().to_rgb8();
        assert!(
            pixels == library,
            "CLI at {threads} thread(s) differs from the library"
        );
        pngs.push(bytes);
    }
    assert_eq!(pngs[1], pngs[2], "two runs write byte-identical PNGs");

    let server = Server::start(&[]);
    let rt = runtime();
    let b64 = rt.block_on(async {
        let body: serde_json::Value = reqwest::Client::new()
            .post(server.url("/v1/images/generations"))
            .json(&serde_json::json!({
                "prompt": "a blue star", "seed": 21, "rng": "torch",
                "prior_steps": 3, "decoder_steps": 3, "super_res_steps": [2],
            }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        body["data"][0]["b64_json"].as_str().unwrap().to_string()
    });
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap();
    let served = image::load_from_memory(&bytes).unwrap().to_rgb8();
    assert!(
        served == library,
        "the server's image differs from the library's"
    );
}

/// `--memory-budget-mib`: the cost is measured at start; a request needing more than the budget
/// is refused with 400 naming the largest `n` that fits, one that fits runs; a budget below one
/// image refuses to start.
#[test]
fn memory_budget_refuses_what_would_not_fit() {
    let server = Server::start(&["--memory-budget-mib", "1000"]);
    let line = server
        .banner
        .iter()
        .find(|l| l.starts_with("memory budget 1000 MiB"))
        .unwrap_or_else(|| panic!("no memory line in {:?}", server.banner));
    let max: usize = line
        .split("at most ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|k| k.parse().ok())
        .unwrap_or_else(|| panic!("{line}"));
    assert!(
        (1..10).contains(&max),
        "{line}: pick a budget that fits 1 to 9 images"
    );
    runtime().block_on(async {
        let client = reqwest::Client::new();
        let mut body = fast("a red circle", 1);
        body["n"] = (max + 1).into();
        let response = client
            .post(server.url("/v1/images/generations"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400);
        let error: serde_json::Value = response.json().await.unwrap();
        let message = error["error"]["message"].as_str().unwrap();
        assert!(message.contains("memory budget of 1000 MiB"), "{message}");
        assert!(
            message.contains(&format!("at most {max} images")),
            "{message}"
        );
        assert_eq!(error["error"]["param"], "n");
        body["n"] = max.into();
        let response = client
            .post(server.url("/v1/images/generations"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let images: serde_json::Value = response.json().await.unwrap();
        assert_eq!(images["data"].as_array().unwrap().len(), max);
    });
    drop(server);
    let out = Command::new(env!("CARGO_BIN_EXE_unclip"))
        .args([
            "serve",
            "--port",
            "0",
            "--memory-budget-mib",
            "10",
            "--model",
        ])
        .arg(common::tiny_bundle())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("memory budget of 10 MiB is below what one image needs"),
        "{stderr}"
    );
}
