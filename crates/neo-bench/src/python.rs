//! The ZODB side of the benchmark: a virtualenv with ZODB, ZEO, BTrees,
//! matplotlib and our `neo` wheel, a ZEO server, and `zodb_bench.py` run
//! against NEO (this run's cluster), ZEO and FileStorage.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::cluster::{self, Cluster};

const ZODB_BENCH: &str = include_str!("../python/zodb_bench.py");
const CHART: &str = include_str!("../python/bench_chart.py");

/// What the virtualenv gets from PyPI.
const REQUIREMENTS: &[&str] = &["ZODB", "ZEO", "BTrees", "matplotlib", "maturin"];

/// A virtualenv ready for the ZODB side.
pub struct Venv {
    dir: PathBuf,
}

impl Venv {
    fn bin(&self, program: &str) -> PathBuf {
        self.dir.join("bin").join(program)
    }
}

/// Runs a setup step, its output in `log`; on failure, says which step and
/// shows the end of its output.
fn step(what: &str, command: &mut Command, log: &Path) -> Result<(), String> {
    let file = std::fs::File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
    let status = command
        .stdout(file.try_clone().map_err(|e| e.to_string())?)
        .stderr(file)
        .stdin(Stdio::null())
        .status()
        .map_err(|e| format!("{what}: cannot run {:?}: {e}", command.get_program()))?;
    if status.success() {
        return Ok(());
    }
    let output = std::fs::read_to_string(log).unwrap_or_default();
    let tail: Vec<&str> = output.lines().rev().take(15).collect();
    let tail: Vec<&str> = tail.into_iter().rev().collect();
    Err(format!(
        "{what} failed ({status}); the end of {}:\n{}",
        log.display(),
        tail.join("\n")
    ))
}

/// Creates the virtualenv `dir` once (later runs reuse it), then builds our
/// wheel with maturin (a no-op for cargo when nothing changed) and installs
/// it.
pub fn setup(dir: &Path, python: &str, neo_py: &Path) -> Result<Venv, String> {
    let venv = Venv {
        dir: std::path::absolute(dir).map_err(|e| e.to_string())?,
    };
    std::fs::create_dir_all(&venv.dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let log = venv.dir.join("neobench-setup.log");
    if !venv.bin("python").exists() {
        eprintln!(
            "neobench: creating the virtualenv {} (once)",
            venv.dir.display()
        );
        step(
            &format!("`{python} -m venv`"),
            Command::new(python).arg("-m").arg("venv").arg(&venv.dir),
            &log,
        )?;
    }
    let ready = Command::new(venv.bin("python"))
        .args(["-c", "import ZODB, ZEO, BTrees, matplotlib"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|status| status.success())
        .unwrap_or(false);
    if !ready || !venv.bin("maturin").exists() {
        eprintln!(
            "neobench: installing {} from PyPI into the virtualenv",
            REQUIREMENTS.join(", ")
        );
        step(
            "pip install",
            Command::new(venv.bin("python"))
                .args([
                    "-m",
                    "pip",
                    "install",
                    "--quiet",
                    "--disable-pip-version-check",
                ])
                .args(REQUIREMENTS),
            &log,
        )?;
    }
    eprintln!("neobench: building the neo wheel (maturin build --release)");
    let wheels = venv.dir.join("wheels");
    let _ = std::fs::remove_dir_all(&wheels);
    step(
        "maturin build",
        Command::new(venv.bin("maturin"))
            .args(["build", "--release", "--quiet", "-o"])
            .arg(&wheels)
            .current_dir(neo_py)
            .env("VIRTUAL_ENV", &venv.dir),
        &log,
    )?;
    let wheel = std::fs::read_dir(&wheels)
        .map_err(|e| e.to_string())?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .find(|path| path.extension().is_some_and(|ext| ext == "whl"))
        .ok_or("maturin built no wheel")?;
    step(
        "pip install of the neo wheel",
        Command::new(venv.bin("python"))
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "--force-reinstall",
                "--no-deps",
            ])
            .arg(&wheel),
        &log,
    )?;
    Ok(venv)
}

/// A ZEO server (`runzeo`) over a FileStorage: killed on drop.
struct Zeo {
    child: Child,
    address: String,
}

impl Zeo {
    fn start(venv: &Venv, dir: &Path) -> Result<Zeo, String> {
        let port = cluster::free_port()?;
        let address = format!("127.0.0.1:{port}");
        let log = std::fs::File::create(dir.join("zeo.log")).map_err(|e| e.to_string())?;
        let child = Command::new(venv.bin("runzeo"))
            .arg("-a")
            .arg(&address)
            .arg("-f")
            .arg(dir.join("zeo.fs"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot start runzeo: {e}"))?;
        let mut zeo = Zeo { child, address };
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(&zeo.address).is_err() {
            if let Ok(Some(status)) = zeo.child.try_wait() {
                return Err(format!(
                    "runzeo exited ({status}); see {}",
                    dir.join("zeo.log").display()
                ));
            }
            if Instant::now() > deadline {
                return Err("the ZEO server did not listen within 30 s".into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(zeo)
    }
}

impl Drop for Zeo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `zodb_bench.py` with these arguments, killed after `limit`; its
/// stdout is the JSON report.
fn run_script(venv: &Venv, dir: &Path, args: &[String], limit: Duration) -> Result<Value, String> {
    let script = dir.join("zodb_bench.py");
    std::fs::write(&script, ZODB_BENCH).map_err(|e| e.to_string())?;
    let output = dir.join(format!("zodb-{}.json", args[1]));
    let file = std::fs::File::create(&output).map_err(|e| e.to_string())?;
    let mut child = Command::new(venv.bin("python"))
        .arg(&script)
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(file)
        .spawn()
        .map_err(|e| format!("cannot run zodb_bench.py: {e}"))?;
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "zodb_bench.py {} did not finish within {} s",
                args.join(" "),
                limit.as_secs()
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    if !status.success() {
        return Err(format!("zodb_bench.py {} failed ({status})", args[1]));
    }
    let text = std::fs::read_to_string(&output).map_err(|e| e.to_string())?;
    serde_json::from_str(&text).map_err(|e| format!("zodb_bench.py {}: bad JSON: {e}", args[1]))
}

/// The same workloads through the ZODB API for NEO (against `cluster`),
/// ZEO (a server started here) and FileStorage (in-process).
pub fn measure(
    venv: &Venv,
    plan: &Value,
    cluster: &Cluster,
    dir: &Path,
    limit: Duration,
) -> Result<Value, String> {
    let dir = std::path::absolute(dir).map_err(|e| e.to_string())?;
    let plan = plan.to_string();
    let mut results = serde_json::Map::new();

    let mut args = vec![
        "--kind".to_owned(),
        "neo".to_owned(),
        "--master".to_owned(),
        cluster.master.to_string(),
        "--name".to_owned(),
        cluster.name.clone(),
        "--plan".to_owned(),
        plan.clone(),
    ];
    for node in cluster.nodes() {
        if node.label != "admin" {
            args.extend(["--server-pid".to_owned(), node.pid().to_string()]);
        }
    }
    results.insert("neo".into(), run_script(venv, &dir, &args, limit)?);
    let neo_rss: serde_json::Map<String, Value> = cluster
        .nodes()
        .iter()
        .map(|node| (node.label.clone(), json!(node.peak_rss_kib())))
        .collect();
    results.insert("neo_servers_peak_rss_kib".into(), Value::Object(neo_rss));

    let zeo = Zeo::start(venv, &dir)?;
    let rest_kib = cluster::status_field(zeo.child.id(), "VmRSS:").unwrap_or(0);
    let cpu_before = cluster::cpu_time(zeo.child.id()).unwrap_or_default();
    let args = [
        "--kind",
        "zeo",
        "--address",
        &zeo.address,
        "--plan",
        &plan,
        "--server-pid",
        &zeo.child.id().to_string(),
    ]
    .map(str::to_owned);
    results.insert("zeo".into(), run_script(venv, &dir, &args, limit)?);
    let cpu = cluster::cpu_time(zeo.child.id()).unwrap_or_default() - cpu_before;
    results.insert(
        "zeo_server".into(),
        json!({
            "rss_at_rest_kib": rest_kib,
            "peak_rss_kib": cluster::status_field(zeo.child.id(), "VmHWM:").unwrap_or(0),
            "cpu_s": cpu.as_secs_f64(),
        }),
    );
    drop(zeo);

    let path = dir.join("filestorage").join("data.fs");
    std::fs::create_dir_all(path.parent().unwrap_or(&dir)).map_err(|e| e.to_string())?;
    let args = [
        "--kind",
        "filestorage",
        "--path",
        &path.to_string_lossy(),
        "--plan",
        &plan,
    ]
    .map(str::to_owned);
    results.insert("filestorage".into(), run_script(venv, &dir, &args, limit)?);
    Ok(Value::Object(results))
}

/// Renders `json` as the PNG `png` with the virtualenv's matplotlib.
pub fn chart(venv: &Venv, json: &Path, png: &Path) -> Result<(), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let script = dir.path().join("bench_chart.py");
    std::fs::write(&script, CHART).map_err(|e| e.to_string())?;
    step(
        "the chart (bench_chart.py)",
        Command::new(venv.bin("python"))
            .arg(&script)
            .arg(json)
            .arg(png)
            .env("MPLCONFIGDIR", dir.path()),
        &dir.path().join("chart.log"),
    )
}
