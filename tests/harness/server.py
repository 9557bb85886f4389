"""A real ComfyUI server on loopback with this package in its custom_nodes, stopped by
its own PID, and a small HTTP client for it."""
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PACKAGE_FOLDER = "attend-and-excite"
TEST_NODES = "tiny_family_nodes"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, url: str, process: subprocess.Popen, log_path: str):
        self.url, self.process, self.log_path = url, process, log_path

    def log(self) -> str:
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def request(self, path: str, body=None, timeout: float = 60):
        """(status, JSON answer); a bytes body is sent as it is."""
        data = body if body is None or isinstance(body, bytes) else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as error:
            text = error.read()
            try:
                return error.code, json.loads(text or b"null")
            except ValueError:
                return error.code, text.decode(errors="replace")

    def run_prompt(self, prompt: dict, timeout: float = 1800) -> dict:
        """Queues an API-format prompt and waits for its history entry."""
        status, answer = self.request("/prompt", {"prompt": prompt, "client_id": "attend-excite-tests"})
        if status != 200:
            raise RuntimeError(f"/prompt refused the workflow ({status}): {json.dumps(answer)[:2000]}")
        return self.wait(answer["prompt_id"], timeout)

    def finished(self) -> dict:
        """{prompt id: history entry} of every prompt the server has finished running."""
        _, history = self.request("/history")
        return {key: entry for key, entry in (history or {}).items()
                if entry.get("status", {}).get("completed") is not None}

    def wait(self, prompt_id: str | None = None, timeout: float = 1800, known: frozenset = frozenset()) -> dict:
        """The history entry of a queued prompt once it has run: `prompt_id`, or (None) the
        first prompt to finish that is not in `known`, such as one the browser queued.

        It follows the server's own record of progress (its history and queue), however
        slowly a busy machine runs it; `timeout` is only the limit for a server that hangs.
        """
        deadline = time.monotonic() + timeout
        while True:
            done = {key: entry for key, entry in self.finished().items()
                    if key == prompt_id or (prompt_id is None and key not in known)}
            if done:
                return next(iter(done.values()))
            if self.process.poll() is not None:
                raise RuntimeError("the server died:\n" + self.log()[-4000:])
            if time.monotonic() > deadline:
                _, queue = self.request("/queue")
                raise TimeoutError(
                    f"waited {timeout} s for {'prompt ' + prompt_id if prompt_id else 'a newly queued prompt'} to "
                    f"finish; the server's queue has {len(queue.get('queue_running', []))} running and "
                    f"{len(queue.get('queue_pending', []))} pending. Server log:\n{self.log()[-3000:]}")
            time.sleep(0.5)


@contextlib.contextmanager
def running_server(base_dir: str, comfy_dir: str, startup_timeout: float = 180, front_end_root: str | None = None):
    """ComfyUI's main.py on 127.0.0.1 with --base-directory base_dir, on the CPU, with
    API nodes off so that nothing calls outside this machine; this package in its custom_nodes,
    and the tests' own loader of tiny family models (tiny_family_nodes); front_end_root: another
    frontend's static files than the one the tree pins."""
    custom_nodes = os.path.join(base_dir, "custom_nodes")
    os.makedirs(custom_nodes, exist_ok=True)
    for folder, source in ((PACKAGE_FOLDER, REPO), (TEST_NODES, os.path.join(os.path.dirname(__file__), TEST_NODES))):
        link = os.path.join(custom_nodes, folder)
        if not os.path.exists(link):
            os.symlink(source, link)
    port = free_port()
    log_path = os.path.join(base_dir, "server.log")
    command = [sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port),
               "--base-directory", base_dir, "--disable-api-nodes", "--disable-auto-launch",
               "--database-url", "sqlite:///:memory:"]
    command += ["--front-end-root", front_end_root] if front_end_root else []
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, cwd=comfy_dir, stdout=log, stderr=subprocess.STDOUT)
    server = Server(f"http://127.0.0.1:{port}", process, log_path)
    try:
        deadline = time.monotonic() + startup_timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError("ComfyUI exited while starting:\n" + server.log()[-4000:])
            try:
                if server.request("/system_stats", timeout=5)[0] == 200:
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("ComfyUI did not answer in time:\n" + server.log()[-4000:])
            time.sleep(0.5)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
