//! Black-box tests of images sent with a prompt: a real `crushd`, its SQLite file, and the
//! loopback mock model in both API dialects. A model that accepts images (`images = true` in
//! its config table, or a preset) is shown them — in this turn and, from the store, in later
//! turns and after a restart; a model that does not refuses the prompt with a reason before
//! anything is accepted; images no provider takes are refused with the field named.
#![cfg(unix)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::{Value, json};

use crush_tests::mock_llm::{MockLlm, Script};
use crush_tests::{DEADLINE, RawConn, TestEnv};

/// A 1×1 transparent PNG.
const PIXEL: &str =
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAQAAAC1HAwCAAAAC0lEQVR42mNkYAAAAAYAAjCB0C8AAAAASUVORK5CYII=";

const IMAGES_ON: &str = "[providers.mock.models.\"mock-1\"]\nimages = true\n";

async fn session(c: &mut RawConn, env: &TestEnv) -> String {
    let ws = c
        .request("workspace/open", json!({"path": env.dir.path()}))
        .await;
    let s = c
        .request(
            "session/create",
            json!({"workspaceId": ws["result"]["workspaceId"]}),
        )
        .await;
    let id = s["result"]["sessionId"].as_str().unwrap().to_owned();
    let r = c
        .request("session/subscribe", json!({"sessionId": id}))
        .await;
    assert!(r.get("result").is_some(), "{r}");
    id
}

fn send_params(session: &str, prompt: &str, images: Value) -> Value {
    json!({"sessionId": session, "prompt": prompt, "images": images})
}

async fn run(c: &mut RawConn, params: Value) -> Value {
    let r = c.request("agent/send", params).await;
    let run = r["result"]["runId"]
        .as_str()
        .unwrap_or_else(|| panic!("agent/send failed: {r}"))
        .to_owned();
    c.run_complete(&run).await
}

#[tokio::test]
async fn a_prompts_image_reaches_the_model_in_both_dialects_and_again_after_a_restart() {
    for api in ["openai", "anthropic"] {
        let env = TestEnv::new();
        let mock = MockLlm::start().await;
        env.use_model_with(&mock.base_url(), api, IMAGES_ON);
        let sid;
        {
            let mut d = env.spawn_daemon(&[]);
            let mut c = RawConn::initialized(&env.socket).await;
            let models = c.request("model/list", json!({})).await;
            let mock1 = models["result"]["models"]
                .as_array()
                .unwrap()
                .iter()
                .find(|m| m["name"] == "mock/mock-1")
                .cloned()
                .unwrap();
            assert_eq!(mock1["images"], true, "{mock1}");
            sid = session(&mut c, &env).await;
            mock.push(Script::text("A pixel."));
            let image = json!([{"mimeType": "image/png", "data": PIXEL, "name": "pixel.png"}]);
            let done = run(&mut c, send_params(&sid, "what is this?", image)).await;
            assert_eq!(done["text"], "A pixel.", "{api}: {done}");
            let images = mock.requests()[0].images();
            assert_eq!(
                images,
                [("user".to_owned(), "image/png".to_owned(), PIXEL.to_owned())],
                "{api}"
            );
            let m = c
                .request("session/messages", json!({"sessionId": sid}))
                .await;
            let user = &m["result"]["messages"][0];
            assert_eq!(user["role"], "user");
            assert_eq!(
                user["parts"][1],
                json!({"type": "image", "mimeType": "image/png", "data": PIXEL, "name": "pixel.png"}),
                "{api}: {user}"
            );
            d.signal(rustix::process::Signal::TERM);
            assert!(d.wait_exit(DEADLINE).success());
        }
        let _d = env.spawn_daemon(&[]);
        let mut c = RawConn::initialized(&env.socket).await;
        c.request("session/subscribe", json!({"sessionId": sid}))
            .await;
        mock.push(Script::text("Still a pixel."));
        let done = run(&mut c, json!({"sessionId": sid, "prompt": "and now?"})).await;
        assert_eq!(done["text"], "Still a pixel.", "{api}: {done}");
        assert_eq!(
            mock.requests()[1].images().len(),
            1,
            "{api}: from the store"
        );
    }
}

#[tokio::test]
async fn a_model_without_images_refuses_the_prompt_and_nothing_is_accepted() {
    let env = TestEnv::new();
    let mock = MockLlm::start().await;
    env.use_model_with(&mock.base_url(), "openai", "");
    let _d = env.spawn_daemon(&[]);
    let mut c = RawConn::initialized(&env.socket).await;
    let sid = session(&mut c, &env).await;
    let image = json!([{"mimeType": "image/png", "data": PIXEL}]);
    let r = c
        .request("agent/send", send_params(&sid, "what is this?", image))
        .await;
    assert_eq!(r["error"]["code"], -32602, "{r}");
    let msg = r["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("does not accept images") && msg.contains("images = true"),
        "the error says why and what to set: {msg}"
    );
    let m = c
        .request("session/messages", json!({"sessionId": sid}))
        .await;
    assert_eq!(m["result"]["messages"], json!([]), "nothing was stored");
    assert!(mock.requests().is_empty(), "the model was not called");
}

#[tokio::test]
async fn images_no_provider_takes_are_refused_with_the_field_named() {
    let env = TestEnv::new();
    let mock = MockLlm::start().await;
    env.use_model_with(&mock.base_url(), "openai", IMAGES_ON);
    let _d = env.spawn_daemon(&[]);
    let mut c = RawConn::initialized(&env.socket).await;
    let sid = session(&mut c, &env).await;
    for (image, field) in [
        (
            json!({"mimeType": "image/svg+xml", "data": PIXEL}),
            "images[0].mimeType",
        ),
        (
            json!({"mimeType": "image/png", "data": "not base64!"}),
            "images[0].data",
        ),
        (json!({"mimeType": "image/png"}), "data"),
    ] {
        let r = c
            .request("agent/send", send_params(&sid, "look", json!([image])))
            .await;
        assert_eq!(r["error"]["code"], -32602, "{r}");
        assert!(
            r["error"]["message"].as_str().unwrap().contains(field),
            "{field}: {r}"
        );
    }
    // An image alone is a prompt.
    mock.push(Script::text("Seen."));
    let image = json!([{"mimeType": "image/png", "data": PIXEL}]);
    let done = run(&mut c, send_params(&sid, "", image)).await;
    assert_eq!(done["text"], "Seen.", "{done}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crushctl_run_image_sends_the_file_and_refuses_what_it_cannot_send() {
    use base64::Engine as _;
    let env = TestEnv::new();
    let mock = MockLlm::start().await;
    env.use_model_with(&mock.base_url(), "openai", IMAGES_ON);
    let _d = env.spawn_daemon(&[]);
    let png = base64::engine::general_purpose::STANDARD
        .decode(PIXEL)
        .unwrap();
    let file = env.dir.path().join("pixel.png");
    std::fs::write(&file, png).unwrap();
    mock.push(Script::text("A pixel."));
    let out = tokio::process::Command::from(env.command("crushctl"))
        .current_dir(env.dir.path())
        .args(["run", "--image"])
        .arg(&file)
        .arg("what is this?")
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stderr: {err}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("A pixel."));
    assert_eq!(
        mock.requests()[0].images(),
        [("user".to_owned(), "image/png".to_owned(), PIXEL.to_owned())]
    );
    let txt = env.dir.path().join("notes.txt");
    std::fs::write(&txt, "hi").unwrap();
    let out = tokio::process::Command::from(env.command("crushctl"))
        .current_dir(env.dir.path())
        .args(["run", "--image"])
        .arg(&txt)
        .arg("look")
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "a usage error");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("notes.txt") && err.contains(".png"), "{err}");
}
