//! The official Python `kubernetes` client (the second reference client) against
//! kube-apiserver: CRUD, selectors, scale, a watch, and API errors. `scripts/test`
//! installs the client into a virtualenv and names its interpreter in
//! `FERROKUBE_PYTHON`.

use std::process::Command;

use integration_tests::apiserver::ApiServer;

#[test]
fn python_client_crud_and_watch() {
    let python = std::env::var("FERROKUBE_PYTHON").unwrap_or_else(|_| {
        panic!("FERROKUBE_PYTHON is not set: run the tests through scripts/test, which installs the Python kubernetes client")
    });
    let dir = tempfile::tempdir().unwrap();
    let api = ApiServer::start(dir.path());
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/python/client_crud_watch.py");
    let out = Command::new(&python)
        .arg(script)
        .env("KUBECONFIG", api.kubeconfig())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.trim_end().ends_with("OK"),
        "python client test failed:\n{stdout}\n{}\nserver log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        api.log_tail()
    );
}
