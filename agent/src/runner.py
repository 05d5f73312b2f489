#!/usr/bin/env python3
"""Backend.AI process-runtime kernel runner (shipped inside the agent binary).

Usage: runner.py python|bash

Protocol with the agent: one JSON command per line on our stdin, one JSON message per
line on our stdout. Both are moved to private descriptors at start-up: fd 0 becomes
/dev/null and fds 1 and 2 become pipes that this process reads itself, so everything the
user's code (and any subprocess it starts) prints is captured as console output, and
nothing the user does can corrupt the protocol stream.

Commands (agent -> runner):
  {"op": "exec",  "run_id": str, "code": str}                  query mode
  {"op": "batch", "run_id": str, "code": str, "opts": {...}}   batch mode (clean/build/exec)
  {"op": "input", "data": str}                                 answer to waiting-input
  {"op": "complete", "req": int, "text": str}                  completions (answered at once)
Messages (runner -> agent):
  {"t": "ready", "pid": int, "lang": str}
  {"t": "out", "run_id": str, "stream": "stdout"|"stderr", "data": str}
  {"t": "waiting-input", "run_id": str, "is_password": bool}
  {"t": "finished", "run_id": str, "exit_code": int}
  {"t": "completions", "req": int, "items": [str]}
SIGINT interrupts the running code (KeyboardInterrupt); it is ignored while idle.
"""

import ast
import builtins
import codecs
import getpass
import io
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import traceback

LANG = sys.argv[1] if len(sys.argv) > 1 else "python"
BASH = shutil.which("bash") or "/bin/bash"

# --- descriptors -----------------------------------------------------------------------
CMD_FD = os.dup(0)  # os.dup: not inherited by children
PROTO_FD = os.dup(1)
_null = os.open(os.devnull, os.O_RDONLY)
os.dup2(_null, 0)
os.close(_null)
_out_r, _out_w = os.pipe()
_err_r, _err_w = os.pipe()
os.dup2(_out_w, 1)
os.dup2(_err_w, 2)
os.close(_out_w)
os.close(_err_w)
sys.stdout = io.TextIOWrapper(
    io.FileIO(1, "w", closefd=False), encoding="utf-8", errors="replace", line_buffering=True
)
sys.stderr = io.TextIOWrapper(
    io.FileIO(2, "w", closefd=False), encoding="utf-8", errors="replace", line_buffering=True
)

_proto = os.fdopen(PROTO_FD, "w", encoding="utf-8", buffering=1)
_proto_lock = threading.Lock()


def emit(**msg):
    line = json.dumps(msg, ensure_ascii=False)
    with _proto_lock:
        try:
            _proto.write(line + "\n")
            _proto.flush()
        except (BrokenPipeError, OSError):
            os._exit(0)  # the agent is gone


class State:
    run_id = None
    executing = False


state = State()

# --- output capture ----------------------------------------------------------------------
MARK = ("\x00\x00bai-sync-" + os.urandom(8).hex() + "\x00\x00").encode()


def _partial_mark(buf):
    for k in range(min(len(buf), len(MARK) - 1), 0, -1):
        if buf.endswith(MARK[:k]):
            return k
    return 0


class Pump(threading.Thread):
    """Reads one of our output pipes and forwards it as console output of the current run.
    A sync mark written after a run lets the main thread wait until everything printed
    before it has been forwarded."""

    def __init__(self, fd, stream):
        super().__init__(daemon=True)
        self.fd = fd
        self.stream = stream
        self.decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self.buf = b""
        self.cond = threading.Condition()
        self.marks = 0

    def run(self):
        while True:
            try:
                chunk = os.read(self.fd, 65536)
            except OSError:
                return
            if not chunk:
                return
            self.buf += chunk
            while True:
                i = self.buf.find(MARK)
                if i < 0:
                    break
                self.forward(self.buf[:i])
                self.buf = self.buf[i + len(MARK):]
                with self.cond:
                    self.marks += 1
                    self.cond.notify_all()
            keep = _partial_mark(self.buf)
            cut = len(self.buf) - keep
            data, self.buf = self.buf[:cut], self.buf[cut:]
            self.forward(data)

    def forward(self, data):
        if not data:
            return
        text = self.decoder.decode(data)
        if text:
            emit(t="out", run_id=state.run_id, stream=self.stream, data=text)

    def wait_marks(self, n, timeout=5.0):
        with self.cond:
            return self.cond.wait_for(lambda: self.marks >= n, timeout)


_out_pump = Pump(_out_r, "stdout")
_err_pump = Pump(_err_r, "stderr")
_out_pump.start()
_err_pump.start()
_syncs = 0


def sync_output():
    global _syncs
    for f in (sys.stdout, sys.stderr):
        try:
            f.flush()
        except Exception:
            pass
    _syncs += 1
    os.write(1, MARK)
    os.write(2, MARK)
    _out_pump.wait_marks(_syncs)
    _err_pump.wait_marks(_syncs)


# --- input -------------------------------------------------------------------------------
inputs = queue.Queue()


def _ask(prompt, password):
    if prompt:
        sys.stdout.write(str(prompt))
    sync_output()
    emit(t="waiting-input", run_id=state.run_id, is_password=password)
    return inputs.get()


builtins.input = lambda prompt="": _ask(prompt, False)
getpass.getpass = lambda prompt="Password: ", stream=None: _ask(prompt, True)


class _Stdin(io.TextIOBase):
    def readable(self):
        return True

    def readline(self, size=-1):
        return _ask("", False) + "\n"

    def read(self, size=-1):
        return self.readline()


sys.stdin = _Stdin()

# --- execution ---------------------------------------------------------------------------
namespace = {"__name__": "__main__", "__builtins__": builtins}


def run_python(code):
    try:
        tree = ast.parse(code, "<input>", "exec")
        last = None
        if tree.body and isinstance(tree.body[-1], ast.Expr):
            last = ast.Expression(tree.body.pop().value)
        exec(compile(tree, "<input>", "exec"), namespace)
        if last is not None:
            value = eval(compile(last, "<input>", "eval"), namespace)
            if value is not None:
                print(repr(value))
        return 0
    except SystemExit:
        raise
    except KeyboardInterrupt:
        print("KeyboardInterrupt", file=sys.stderr)
        return 130
    except BaseException:
        etype, value, tb = sys.exc_info()
        # Hide this runner's own frame from the user's traceback.
        traceback.print_exception(etype, value, tb.tb_next if tb is not None else None)
        return 1


def run_shell(cmd):
    proc = subprocess.Popen([BASH, "-c", cmd], stdin=subprocess.DEVNULL)
    try:
        return proc.wait()
    except KeyboardInterrupt:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(5)
        except BaseException:
            proc.kill()
            proc.wait()
        return 130


def run_batch(code, opts):
    for stage in ("clean", "build"):
        cmd = opts.get(stage)
        if cmd:
            rc = run_shell(cmd)
            if rc != 0:
                return rc
    cmd = opts.get("exec")
    if cmd:
        return run_shell(cmd)
    if code:
        return run_python(code) if LANG == "python" else run_shell(code)
    return 0


def complete(text):
    if LANG != "python":
        return []
    try:
        import rlcompleter

        c = rlcompleter.Completer(namespace)
        items = []
        for i in range(100):
            item = c.complete(text, i)
            if item is None:
                break
            items.append(item)
        return items
    except Exception:
        return []


# --- command reader ----------------------------------------------------------------------
commands = queue.Queue()


def reader():
    with os.fdopen(CMD_FD, "r", encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                cmd = json.loads(line)
            except ValueError:
                continue
            op = cmd.get("op")
            if op == "input":
                inputs.put(cmd.get("data", ""))
            elif op == "complete":
                emit(t="completions", req=cmd.get("req"), items=complete(cmd.get("text", "")))
            else:
                commands.put(cmd)
    commands.put(None)


def on_sigint(signum, frame):
    if state.executing:
        raise KeyboardInterrupt


signal.signal(signal.SIGINT, on_sigint)
threading.Thread(target=reader, daemon=True).start()
emit(t="ready", pid=os.getpid(), lang=LANG)


def main():
    while True:
        try:
            cmd = commands.get()
        except KeyboardInterrupt:
            continue
        if cmd is None:
            return 0
        state.run_id = cmd.get("run_id")
        while not inputs.empty():
            inputs.get_nowait()
        exit_code = 0
        leave = None
        try:
            state.executing = True
            op = cmd.get("op")
            if op == "exec":
                code = cmd.get("code") or ""
                exit_code = run_python(code) if LANG == "python" else run_shell(code)
            elif op == "batch":
                exit_code = run_batch(cmd.get("code") or "", cmd.get("opts") or {})
        except KeyboardInterrupt:
            exit_code = 130
        except SystemExit as e:
            if e.code is None:
                leave = 0
            elif isinstance(e.code, int):
                leave = e.code
            else:
                print(e.code, file=sys.stderr)
                leave = 1
            exit_code = leave
        finally:
            state.executing = False
        while True:
            try:
                sync_output()
                emit(t="finished", run_id=state.run_id, exit_code=exit_code)
                break
            except KeyboardInterrupt:
                continue
        if leave is not None:
            return leave


if __name__ == "__main__":
    os._exit(main() or 0)
