//! One connection of the benchmark loops (`connect_loop`, `ab_loop`): connect to a local
//! listener, accept, close the client with SO_LINGER 0 (no TIME_WAIT piles up, so the
//! ephemeral ports never run out), close the accepted socket. Four tracer events: connect,
//! accept and two closes; six runs of the program.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;

fn linger_zero(s: &TcpStream) {
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: valid socket fd and a valid linger struct of the size passed.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const l).cast(),
            size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

/// One connection through `l`, listening at `addr`.
pub fn one(l: &TcpListener, addr: SocketAddr) -> std::io::Result<()> {
    let c = TcpStream::connect(addr)?;
    let (s, _) = l.accept()?;
    linger_zero(&c);
    drop(c);
    drop(s);
    Ok(())
}
