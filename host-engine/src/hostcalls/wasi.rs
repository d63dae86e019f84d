//! WASI preview1, as Envoy (proxy-wasm-cpp-host) provides it.

use wasmtime::Linker;

use super::*;

// WASI preview1, as Envoy (proxy-wasm-cpp-host) provides it.

const ERRNO_SUCCESS: i32 = 0;
const ERRNO_BADF: i32 = 8;
const ERRNO_INVAL: i32 = 28;
const ERRNO_NOSYS: i32 = 52;
const ERRNO_SPIPE: i32 = 70;

fn flush_lines(d: &mut VmState, fd: i32) {
    let (buf, level, source) = if fd == 1 {
        (&mut d.stdout, LogLevel::Info, "stdout")
    } else {
        (&mut d.stderr, LogLevel::Error, "stderr")
    };
    let mut lines = Vec::new();
    while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
        let line: Vec<u8> = buf.drain(..=pos).collect();
        lines.push(String::from_utf8_lossy(&line[..line.len() - 1]).into_owned());
    }
    let (worker, ctx) = (d.worker, d.context());
    let mut s = lock(&d.shared);
    for message in lines {
        s.log(LogLine {
            worker,
            level,
            source,
            context_id: ctx,
            message,
        });
    }
}

fn fd_write(mut c: C, fd: i32, iovs: i32, iovs_len: i32, nwritten: i32) -> R {
    if fd != 1 && fd != 2 {
        return Ok(ERRNO_BADF);
    }
    let mut data = Vec::new();
    for i in 0..iovs_len {
        let Some(iov) = read(&mut c, iovs + i * 8, 8) else {
            return Ok(ERRNO_INVAL);
        };
        let ptr = i32::from_le_bytes([iov[0], iov[1], iov[2], iov[3]]);
        let len = i32::from_le_bytes([iov[4], iov[5], iov[6], iov[7]]);
        let Some(bytes) = read(&mut c, ptr, len) else {
            return Ok(ERRNO_INVAL);
        };
        data.extend_from_slice(&bytes);
    }
    let n = data.len() as u32;
    {
        let d = c.data_mut();
        if fd == 1 {
            d.stdout.extend_from_slice(&data);
        } else {
            d.stderr.extend_from_slice(&data);
        }
        flush_lines(d, fd);
    }
    if !write_u32(&mut c, nwritten, n) {
        return Ok(ERRNO_INVAL);
    }
    Ok(ERRNO_SUCCESS)
}

fn fd_read(_c: C, _fd: i32, _iovs: i32, _len: i32, _nread: i32) -> R {
    Ok(ERRNO_NOSYS)
}

fn fd_seek(_c: C, _fd: i32, _off: i64, _whence: i32, _ret: i32) -> R {
    Ok(ERRNO_SPIPE)
}

fn fd_close(_c: C, _fd: i32) -> R {
    Ok(ERRNO_NOSYS)
}

fn fd_fdstat_get(mut c: C, fd: i32, ret: i32) -> R {
    if !(0..=2).contains(&fd) {
        return Ok(ERRNO_BADF);
    }
    // filetype CHARACTER_DEVICE, no flags, rights fd_write (stdout/stderr) or fd_read (stdin).
    let mut stat = [0u8; 24];
    stat[0] = 2;
    let rights: u64 = if fd == 0 { 1 << 1 } else { 1 << 6 };
    stat[8..16].copy_from_slice(&rights.to_le_bytes());
    if !write(&mut c, ret, &stat) {
        return Ok(ERRNO_INVAL);
    }
    Ok(ERRNO_SUCCESS)
}

fn fd_fdstat_set_flags(_c: C, _fd: i32, _flags: i32) -> R {
    Ok(ERRNO_NOSYS)
}

fn fd_prestat_get(_c: C, _fd: i32, _ret: i32) -> R {
    // No preopened directories: libc stops scanning at the first EBADF.
    Ok(ERRNO_BADF)
}

fn fd_prestat_dir_name(_c: C, _fd: i32, _p: i32, _l: i32) -> R {
    Ok(ERRNO_NOSYS)
}

#[allow(clippy::too_many_arguments)]
fn path_open(
    _c: C,
    _fd: i32,
    _flags: i32,
    _p: i32,
    _l: i32,
    _o: i32,
    _rb: i64,
    _ri: i64,
    _ff: i32,
    _ret: i32,
) -> R {
    Ok(ERRNO_NOSYS)
}

fn env_strings(c: &C) -> Vec<Vec<u8>> {
    lock(&c.data().shared)
        .env
        .iter()
        .map(|(k, v)| {
            let mut s = format!("{k}={v}").into_bytes();
            s.push(0);
            s
        })
        .collect()
}

fn environ_sizes_get(mut c: C, count_ptr: i32, size_ptr: i32) -> R {
    let env = env_strings(&c);
    let size: usize = env.iter().map(|e| e.len()).sum();
    if !write_u32(&mut c, count_ptr, env.len() as u32) || !write_u32(&mut c, size_ptr, size as u32)
    {
        return Ok(ERRNO_INVAL);
    }
    Ok(ERRNO_SUCCESS)
}

fn environ_get(mut c: C, environ: i32, buf: i32) -> R {
    let env = env_strings(&c);
    let mut at = buf;
    for (i, e) in env.iter().enumerate() {
        if !write_u32(&mut c, environ + (i as i32) * 4, at as u32) || !write(&mut c, at, e) {
            return Ok(ERRNO_INVAL);
        }
        at += e.len() as i32;
    }
    Ok(ERRNO_SUCCESS)
}

fn args_sizes_get(mut c: C, argc: i32, size: i32) -> R {
    if !write_u32(&mut c, argc, 0) || !write_u32(&mut c, size, 0) {
        return Ok(ERRNO_INVAL);
    }
    Ok(ERRNO_SUCCESS)
}

fn args_get(_c: C, _argv: i32, _buf: i32) -> R {
    Ok(ERRNO_SUCCESS)
}

fn clock_time_get(mut c: C, id: i32, _precision: i64, ret: i32) -> R {
    let (now, start) = {
        let s = lock(&c.data().shared);
        (s.wall_ns(), s.start_ns)
    };
    let value = match id {
        0 => now,                                           // REALTIME
        1..=3 => now.saturating_sub(start) + 1_000_000_000, // MONOTONIC, process and thread CPU time
        _ => return Ok(ERRNO_INVAL),
    };
    if !write_u64(&mut c, ret, value) {
        return Ok(ERRNO_INVAL);
    }
    Ok(ERRNO_SUCCESS)
}

fn clock_res_get(mut c: C, _id: i32, ret: i32) -> R {
    if !write_u64(&mut c, ret, 1) {
        return Ok(ERRNO_INVAL);
    }
    Ok(ERRNO_SUCCESS)
}

fn random_get(mut c: C, ptr: i32, len: i32) -> R {
    let mut buf = vec![0u8; len as u32 as usize];
    lock(&c.data().shared).rng.fill(&mut buf);
    if !write(&mut c, ptr, &buf) {
        return Ok(ERRNO_INVAL);
    }
    Ok(ERRNO_SUCCESS)
}

fn proc_exit(_c: C, code: i32) -> wasmtime::Result<()> {
    Err(wasmtime::Error::new(ProcExit(code)))
}

fn sched_yield(_c: C) -> R {
    Ok(ERRNO_SUCCESS)
}

fn poll_oneoff(_c: C, _in: i32, _out: i32, _n: i32, _ret: i32) -> R {
    Ok(ERRNO_NOSYS)
}

pub(super) fn register(l: &mut Linker<VmState>) -> wasmtime::Result<()> {
    l.func_wrap("wasi_snapshot_preview1", "fd_write", fd_write)?;
    l.func_wrap("wasi_snapshot_preview1", "fd_read", fd_read)?;
    l.func_wrap("wasi_snapshot_preview1", "fd_seek", fd_seek)?;
    l.func_wrap("wasi_snapshot_preview1", "fd_close", fd_close)?;
    l.func_wrap("wasi_snapshot_preview1", "fd_fdstat_get", fd_fdstat_get)?;
    l.func_wrap(
        "wasi_snapshot_preview1",
        "fd_fdstat_set_flags",
        fd_fdstat_set_flags,
    )?;
    l.func_wrap("wasi_snapshot_preview1", "fd_prestat_get", fd_prestat_get)?;
    l.func_wrap(
        "wasi_snapshot_preview1",
        "fd_prestat_dir_name",
        fd_prestat_dir_name,
    )?;
    l.func_wrap("wasi_snapshot_preview1", "path_open", path_open)?;
    l.func_wrap(
        "wasi_snapshot_preview1",
        "environ_sizes_get",
        environ_sizes_get,
    )?;
    l.func_wrap("wasi_snapshot_preview1", "environ_get", environ_get)?;
    l.func_wrap("wasi_snapshot_preview1", "args_sizes_get", args_sizes_get)?;
    l.func_wrap("wasi_snapshot_preview1", "args_get", args_get)?;
    l.func_wrap("wasi_snapshot_preview1", "clock_time_get", clock_time_get)?;
    l.func_wrap("wasi_snapshot_preview1", "clock_res_get", clock_res_get)?;
    l.func_wrap("wasi_snapshot_preview1", "random_get", random_get)?;
    l.func_wrap("wasi_snapshot_preview1", "proc_exit", proc_exit)?;
    l.func_wrap("wasi_snapshot_preview1", "sched_yield", sched_yield)?;
    l.func_wrap("wasi_snapshot_preview1", "poll_oneoff", poll_oneoff)?;
    Ok(())
}
