"""A real SSH/SFTP server (asyncssh, which dvc-ssh's client is built on) for the remote tests:

    python tests/ssh_server.py ROOT PORT AUTHORIZED_PUBLIC_KEY_FILE

Loopback only; any user name, public-key login with the one authorized key; SFTP confined to ROOT.
"""
import asyncio
import sys

import asyncssh


async def serve(root, port, authorized):
    await asyncssh.listen("127.0.0.1", port, server_host_keys=[asyncssh.generate_private_key("ssh-ed25519")],
                          authorized_client_keys=asyncssh.import_authorized_keys(authorized),
                          sftp_factory=lambda channel: asyncssh.SFTPServer(channel, chroot=root), allow_scp=False)
    print("listening", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    root, port, key_file = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    with open(key_file) as f:
        asyncio.run(serve(root, port, f.read()))
