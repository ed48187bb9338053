// `VMConsole`: the guest's serial console in an xterm.js terminal, fitted to its box, with
// copy (Ctrl+Shift+C or the button), paste (Ctrl+Shift+V, the browser's paste, or the
// button) and a font size control.
import { useEffect, useRef, useState } from 'react';
import { Terminal } from '@xterm/xterm';
import { FitAddon } from '@xterm/addon-fit';
import '@xterm/xterm/css/xterm.css';
import type { VMConsoleHandle } from '../hooks/useVMConsole';
import { ConnectionDot, ErrorBanner } from './common';

const FONT_KEY = 'vmfleet.console.fontSize';

export function VMConsole({ console: handle }: { console: VMConsoleHandle }) {
  const box = useRef<HTMLDivElement>(null);
  const term = useRef<Terminal | null>(null);
  const refitRef = useRef<() => void>(() => {});
  const [fontSize, setFontSize] = useState(() => Number(localStorage.getItem(FONT_KEY)) || 14);
  const [note, setNote] = useState<string | null>(null);
  const sendRef = useRef(handle.send);
  sendRef.current = handle.send;

  useEffect(() => {
    const el = box.current;
    if (!el) return undefined;
    const t = new Terminal({ convertEol: false, cursorBlink: true, fontSize, scrollback: 5000, fontFamily: 'monospace' });
    const fit = new FitAddon();
    t.loadAddon(fit);
    t.open(el);
    term.current = t;
    const refit = () => {
      try {
        fit.fit();
      } catch {
        // Not laid out yet.
      }
    };
    refitRef.current = refit;
    refit();
    const ro = typeof ResizeObserver !== 'undefined' ? new ResizeObserver(refit) : null;
    ro?.observe(el);
    const input = t.onData((d) => {
      if (!sendRef.current(d)) setNote('Not connected: keystrokes are not sent');
    });
    t.attachCustomKeyEventHandler((ev) => {
      if (ev.type !== 'keydown' || !ev.ctrlKey || !ev.shiftKey) return true;
      if (ev.code === 'KeyC') {
        void copy(t);
        return false;
      }
      if (ev.code === 'KeyV') {
        void paste();
        return false;
      }
      return true;
    });
    return () => {
      input.dispose();
      ro?.disconnect();
      t.dispose();
      term.current = null;
    };
    // The terminal is made once; font size changes are applied below.
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, []);

  useEffect(() => {
    const t = term.current;
    if (!t) return undefined;
    return handle.subscribe((ev) => {
      if (ev.kind === 'reset') t.reset();
      else t.write(ev.text);
    });
  }, [handle.subscribe]);

  useEffect(() => {
    const t = term.current;
    if (!t) return;
    t.options.fontSize = fontSize;
    localStorage.setItem(FONT_KEY, String(fontSize));
    refitRef.current();
  }, [fontSize]);

  async function copy(t: Terminal) {
    const text = t.getSelection();
    if (!text) {
      setNote('Select text in the console to copy it');
      return;
    }
    try {
      await navigator.clipboard.writeText(text);
      setNote('Copied');
    } catch (e) {
      setNote(`Copy failed: ${e instanceof Error ? e.message : String(e)}`);
    }
  }

  async function paste() {
    try {
      const text = await navigator.clipboard.readText();
      if (text && !handle.send(text)) setNote('Not connected: the paste was not sent');
    } catch (e) {
      setNote(`Paste failed (the browser may need permission): ${e instanceof Error ? e.message : String(e)}`);
    }
  }

  return (
    <div className="console">
      <div className="toolbar">
        <ConnectionDot state={handle.connectionState} retryInMs={handle.retryInMs} />
        {handle.ended && <span className="muted">the console ended (the guest stopped)</span>}
        <span className="spacer" />
        <button type="button" onClick={() => term.current && void copy(term.current)} title="Ctrl+Shift+C">
          Copy
        </button>
        <button type="button" onClick={() => void paste()} title="Ctrl+Shift+V">
          Paste
        </button>
        <button type="button" onClick={() => setFontSize((s) => Math.max(8, s - 1))} aria-label="smaller font">
          A−
        </button>
        <span className="muted">{fontSize}px</span>
        <button type="button" onClick={() => setFontSize((s) => Math.min(32, s + 1))} aria-label="larger font">
          A+
        </button>
        {(handle.connectionState === 'closed' || handle.ended) && (
          <button type="button" onClick={handle.reconnect}>
            Reconnect
          </button>
        )}
      </div>
      <ErrorBanner error={handle.error} />
      {note && <div className="note">{note}</div>}
      <div className="terminal" ref={box} data-testid="terminal" />
    </div>
  );
}
