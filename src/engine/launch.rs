//! Starting a data-parallel run, as Detectron2's `launch()`: the same `train_net` on one
//! process, on several GPUs of one machine, across machines, or under `mpirun`.
//!
//! - `mpirun -np K train_net ...` (`--features mpi`): every process is a rank of MPI's
//!   world; MPI gives the ranks.
//! - `train_net --num-gpus N [--num-machines M --machine-rank R --dist-url tcp://H:P]`
//!   (`--features nccl`): this process starts one worker per GPU (itself again, with the
//!   rank in its environment) and watches them: when one fails, the others are stopped
//!   and the failure is reported. Global rank 0 makes the NCCL unique id and hands it to
//!   the others over the rendezvous at `--dist-url` (`auto`: a free local port).
//! - Otherwise: one process, no group.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use crate::distributed;
use crate::error::{Error, Result};

/// Where a worker of the launcher learns its place.
const ENV_RANK: &str = "CANDLETRON_RANK";
const ENV_LOCAL_RANK: &str = "CANDLETRON_LOCAL_RANK";
const ENV_WORLD_SIZE: &str = "CANDLETRON_WORLD_SIZE";
const ENV_DIST_URL: &str = "CANDLETRON_DIST_URL";

/// The launch options of `train_net` (Detectron2's `default_argument_parser`).
#[derive(Debug, Clone)]
pub struct LaunchArgs {
    pub num_gpus: usize,
    pub num_machines: usize,
    pub machine_rank: usize,
    /// `tcp://HOST:PORT` of global rank 0's rendezvous, or `auto` (one machine).
    pub dist_url: String,
    /// How long a collective or the rendezvous waits for the other ranks.
    pub timeout: Duration,
}

impl Default for LaunchArgs {
    fn default() -> Self {
        Self {
            num_gpus: 1,
            num_machines: 1,
            machine_rank: 0,
            dist_url: "auto".into(),
            timeout: distributed::watchdog::DEFAULT_TIMEOUT,
        }
    }
}

/// This process's place in the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    pub rank: usize,
    pub world_size: usize,
    /// The GPU of this process on its machine (launcher workers), else `None`.
    pub local_rank: Option<usize>,
}

impl LaunchArgs {
    fn world_size(&self) -> usize {
        self.num_gpus * self.num_machines
    }

    fn check(&self) -> Result<()> {
        if self.num_gpus == 0 || self.num_machines == 0 {
            return Err(Error::run(
                "--num-gpus and --num-machines must be at least 1",
            ));
        }
        if self.machine_rank >= self.num_machines {
            return Err(Error::run(format!(
                "--machine-rank {} is not below --num-machines {}",
                self.machine_rank, self.num_machines
            )));
        }
        if self.num_machines > 1 && self.dist_url == "auto" {
            return Err(Error::run(
                "--dist-url auto works on one machine only; give every machine \
                 --dist-url tcp://HOST:PORT of machine 0",
            ));
        }
        Ok(())
    }
}

/// Runs `main` in this process's role and leaves the group afterwards. A rank whose
/// `main` fails ends the others (they would wait for it in their next collective).
pub fn launch(args: &LaunchArgs, main: impl FnOnce(Placement) -> Result<()>) -> Result<()> {
    args.check()?;
    distributed::watchdog::set_timeout(args.timeout);
    if let Some(p) = join_mpi()? {
        return run_rank(p, main);
    }
    if let Some(p) = join_as_worker(args)? {
        return run_rank(p, main);
    }
    if args.world_size() == 1 {
        return main(Placement {
            rank: 0,
            world_size: 1,
            local_rank: None,
        });
    }
    if !cfg!(feature = "nccl") {
        return Err(Error::run(format!(
            "--num-gpus {} --num-machines {}: this build has no NCCL; rebuild with \
             `--features nccl` for GPUs, or run CPU ranks with `mpirun -np K train_net ...` \
             on a build with `--features mpi`",
            args.num_gpus, args.num_machines
        )));
    }
    spawn_workers(args)
}

fn run_rank(p: Placement, main: impl FnOnce(Placement) -> Result<()>) -> Result<()> {
    match main(p) {
        Ok(()) => Ok(distributed::shutdown()?),
        Err(e) => {
            eprintln!("error: rank {} of {}: {e}", p.rank, p.world_size);
            distributed::abort_others(1);
            Err(e)
        }
    }
}

/// Joins MPI's world when `mpirun` started this process.
fn join_mpi() -> Result<Option<Placement>> {
    #[cfg(feature = "mpi")]
    if distributed::mpi::launched_by_mpirun() {
        let comm = distributed::mpi::MpiCommunicator::init()?;
        let (rank, world_size) = {
            use distributed::Communicator;
            (comm.rank(), comm.world_size())
        };
        distributed::init(std::sync::Arc::new(comm))?;
        return Ok(Some(Placement {
            rank,
            world_size,
            local_rank: None,
        }));
    }
    Ok(None)
}

fn env_usize(key: &str) -> Result<Option<usize>> {
    match std::env::var(key) {
        Ok(v) => v
            .parse()
            .map(Some)
            .map_err(|_| Error::run(format!("{key}={v} is not a number"))),
        Err(_) => Ok(None),
    }
}

/// Joins the NCCL group as the worker the launcher started, when it is one.
fn join_as_worker(args: &LaunchArgs) -> Result<Option<Placement>> {
    let (Some(rank), Some(local), Some(world)) = (
        env_usize(ENV_RANK)?,
        env_usize(ENV_LOCAL_RANK)?,
        env_usize(ENV_WORLD_SIZE)?,
    ) else {
        return Ok(None);
    };
    let url = std::env::var(ENV_DIST_URL).unwrap_or_else(|_| args.dist_url.clone());
    let placement = Placement {
        rank,
        world_size: world,
        local_rank: Some(local),
    };
    join_nccl(placement, &url, args.timeout)?;
    Ok(Some(placement))
}

#[cfg(feature = "nccl")]
fn join_nccl(p: Placement, url: &str, timeout: Duration) -> Result<()> {
    let id = rendezvous(
        url,
        p.rank,
        p.world_size,
        distributed::nccl::new_unique_id,
        timeout,
    )?;
    // The device the model will be built on (`MODEL.DEVICE cuda:LOCAL_RANK`), so that the
    // communicator's stream is the model's.
    let device = crate::modeling::parse_device(&format!("cuda:{}", p.local_rank.unwrap_or(0)))?;
    let comm = distributed::nccl::NcclCommunicator::new(&device, p.rank, p.world_size, &id)?;
    distributed::init(std::sync::Arc::new(comm))?;
    Ok(())
}

#[cfg(not(feature = "nccl"))]
fn join_nccl(_p: Placement, _url: &str, _timeout: Duration) -> Result<()> {
    Err(Error::run(
        "this process was started as a GPU worker, but the build has no NCCL (`--features nccl`)",
    ))
}

/// `tcp://HOST:PORT` to `HOST:PORT`.
fn socket_address(url: &str) -> Result<String> {
    url.strip_prefix("tcp://")
        .filter(|a| {
            a.rsplit_once(':')
                .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        })
        .map(str::to_string)
        .ok_or_else(|| {
            Error::run(format!(
                "--dist-url `{url}`: expected tcp://HOST:PORT or auto"
            ))
        })
}

/// A free TCP port on this machine, for `--dist-url auto`.
pub fn free_local_url() -> Result<String> {
    let l = TcpListener::bind("127.0.0.1:0")
        .map_err(|e| Error::run(format!("cannot find a free port: {e}")))?;
    let port = l
        .local_addr()
        .map_err(|e| Error::run(format!("cannot find a free port: {e}")))?
        .port();
    Ok(format!("tcp://127.0.0.1:{port}"))
}

/// Hands rank 0's `make()` (the NCCL unique id) to every rank: rank 0 listens at `url`
/// and answers each of the `world - 1` others once; they connect, retrying until
/// `timeout`. Only this id crosses the socket; the training's collectives are NCCL's.
pub fn rendezvous(
    url: &str,
    rank: usize,
    world: usize,
    make: impl FnOnce() -> candle_core::Result<Vec<u8>>,
    timeout: Duration,
) -> Result<Vec<u8>> {
    let addr = socket_address(url)?;
    let deadline = Instant::now() + timeout;
    let io = |e: std::io::Error| Error::run(format!("rendezvous at {url}: {e}"));
    if rank == 0 {
        let payload = make()?;
        let listener = TcpListener::bind(&addr).map_err(io)?;
        listener.set_nonblocking(true).map_err(io)?;
        let mut served = 0;
        while served + 1 < world {
            match listener.accept() {
                Ok((mut s, _)) => {
                    s.set_nonblocking(false).map_err(io)?;
                    s.write_all(&(payload.len() as u32).to_le_bytes())
                        .map_err(io)?;
                    s.write_all(&payload).map_err(io)?;
                    served += 1;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if Instant::now() > deadline {
                        return Err(Error::run(format!(
                            "rendezvous at {url}: {served} of {} ranks arrived within {} s",
                            world - 1,
                            timeout.as_secs()
                        )));
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => return Err(io(e)),
            }
        }
        return Ok(payload);
    }
    loop {
        let target = addr
            .to_socket_addrs()
            .map_err(io)?
            .next()
            .ok_or_else(|| Error::run(format!("rendezvous: cannot resolve {addr}")))?;
        match TcpStream::connect_timeout(&target, Duration::from_secs(1)) {
            Ok(mut s) => {
                s.set_read_timeout(Some(deadline.saturating_duration_since(Instant::now())))
                    .map_err(io)?;
                let mut len = [0u8; 4];
                s.read_exact(&mut len).map_err(io)?;
                let mut payload = vec![0u8; u32::from_le_bytes(len) as usize];
                s.read_exact(&mut payload).map_err(io)?;
                return Ok(payload);
            }
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
            Err(e) => {
                return Err(Error::run(format!(
                    "rendezvous: rank 0 at {url} did not answer within {} s: {e}",
                    timeout.as_secs()
                )))
            }
        }
    }
}

/// Starts this machine's workers (this program again, with their ranks) and waits for
/// them. The first failure stops the rest; Ctrl-C and SIGTERM are passed on, so every
/// worker checkpoints.
fn spawn_workers(args: &LaunchArgs) -> Result<()> {
    let url = if args.dist_url == "auto" {
        free_local_url()?
    } else {
        socket_address(&args.dist_url)?;
        args.dist_url.clone()
    };
    let exe =
        std::env::current_exe().map_err(|e| Error::run(format!("cannot find myself: {e}")))?;
    let argv: Vec<String> = std::env::args().skip(1).collect();
    crate::utils::interrupt::install_interrupt_handler();
    let mut children: Vec<(usize, Child)> = Vec::new();
    for local in 0..args.num_gpus {
        let rank = args.machine_rank * args.num_gpus + local;
        let child = Command::new(&exe)
            .args(&argv)
            .env(ENV_RANK, rank.to_string())
            .env(ENV_LOCAL_RANK, local.to_string())
            .env(ENV_WORLD_SIZE, args.world_size().to_string())
            .env(ENV_DIST_URL, &url)
            .spawn();
        match child {
            Ok(c) => children.push((rank, c)),
            Err(e) => {
                stop_all(&mut children, libc::SIGKILL);
                return Err(Error::run(format!("cannot start worker {rank}: {e}")));
            }
        }
    }
    tracing::info!(
        "started {} workers (ranks {}..{} of {}), rendezvous {url}",
        args.num_gpus,
        args.machine_rank * args.num_gpus,
        (args.machine_rank + 1) * args.num_gpus,
        args.world_size()
    );
    let mut forwarded = false;
    loop {
        if crate::utils::interrupt::interrupted() && !forwarded {
            stop_all(&mut children, libc::SIGTERM);
            forwarded = true;
        }
        let mut running = 0;
        for i in 0..children.len() {
            let (rank, child) = &mut children[i];
            match child.try_wait() {
                Ok(None) => running += 1,
                Ok(Some(status)) if status.success() => {}
                Ok(Some(status)) => {
                    let rank = *rank;
                    children.remove(i);
                    stop_all(&mut children, libc::SIGKILL);
                    return Err(Error::run(format!(
                        "worker rank {rank} exited with {status}; the other workers were \
                         stopped. The last checkpoint in OUTPUT_DIR resumes the run."
                    )));
                }
                Err(e) => return Err(Error::run(format!("cannot watch worker {rank}: {e}"))),
            }
        }
        if running == 0 {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn stop_all(children: &mut [(usize, Child)], signal: i32) {
    for (_, c) in children.iter_mut() {
        if let Ok(None) = c.try_wait() {
            // SAFETY: kill(2) on a child's pid this process started.
            unsafe { libc::kill(c.id() as i32, signal) };
        }
    }
    if signal == libc::SIGKILL {
        for (_, c) in children.iter_mut() {
            let _ = c.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendezvous_hands_rank_zeros_bytes_to_every_rank() {
        let url = free_local_url().unwrap();
        let t = Duration::from_secs(20);
        let others: Vec<_> = (1..4)
            .map(|r| {
                let url = url.clone();
                std::thread::spawn(move || {
                    rendezvous(&url, r, 4, || unreachable!("only rank 0 makes the id"), t)
                })
            })
            .collect();
        let id: Vec<u8> = (0..128).map(|i| (i * 7) as u8).collect();
        let mine = rendezvous(&url, 0, 4, || Ok(id.clone()), t).unwrap();
        assert_eq!(mine, id);
        for h in others {
            assert_eq!(h.join().unwrap().unwrap(), id);
        }
    }

    #[test]
    fn a_missing_rank_or_a_bad_url_is_a_clear_error() {
        let url = free_local_url().unwrap();
        let e = rendezvous(&url, 0, 2, || Ok(vec![1]), Duration::from_millis(300))
            .unwrap_err()
            .to_string();
        assert!(e.contains("0 of 1 ranks arrived"), "{e}");
        let e = rendezvous(&url, 1, 2, || Ok(vec![]), Duration::from_millis(300))
            .unwrap_err()
            .to_string();
        assert!(e.contains("did not answer"), "{e}");
        let e = socket_address("http://x").unwrap_err().to_string();
        assert!(e.contains("tcp://HOST:PORT"), "{e}");
        let args = LaunchArgs {
            num_machines: 2,
            ..Default::default()
        };
        assert!(args
            .check()
            .unwrap_err()
            .to_string()
            .contains("tcp://HOST:PORT"));
        let args = LaunchArgs {
            num_gpus: 2,
            ..Default::default()
        };
        if !cfg!(feature = "nccl") {
            let e = launch(&args, |_| Ok(())).unwrap_err().to_string();
            assert!(e.contains("--features nccl"), "{e}");
        }
    }
}
