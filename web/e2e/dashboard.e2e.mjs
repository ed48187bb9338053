// The dashboard end to end in a real browser: Debian's Chromium driven by playwright-core
// against a real `vmfleet up` (control plane + local agent + a QEMU guest).
//
// A test wallet (a fresh secp256k1 key) is injected as `window.ethereum`; the test signs in
// with it, creates a VM (seeing an API validation message inline first), waits for it to run,
// types `echo hi-<random>` in its console and sees the answer, sees the metrics charts draw
// points, reloads and sees the console screen restored, suspends and resumes it (WebSocket
// commands), takes a snapshot, sees it listed, forces the VM off, restores it from the
// snapshot and deletes the snapshot, stops and deletes the VM, then signs in with the admin
// token and drains and undrains the node. Screenshots of the VM detail and nodes pages go to
// $VMFLEET_SCREENSHOTS (default target/screenshots/).
//
// Environment: VMFLEET_BIN (default ../target/debug/vmfleet), CHROMIUM (default
// /usr/bin/chromium), VMFLEET_E2E_HEADFUL=1 to watch.
import { spawn } from 'node:child_process';
import { mkdtempSync, mkdirSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { secp256k1 } from '@noble/curves/secp256k1';
import { keccak_256 } from '@noble/hashes/sha3';
import { bytesToHex, hexToBytes } from '@noble/hashes/utils';
import { chromium } from 'playwright-core';

const here = dirname(fileURLToPath(import.meta.url));
const root = resolve(here, '../..');
const BIN = process.env.VMFLEET_BIN ?? join(root, 'target/debug/vmfleet');
const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';
const SHOTS = resolve(process.env.VMFLEET_SCREENSHOTS ?? join(root, 'target/screenshots'));
const FLAGS = ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'];

const started = Date.now();
function log(msg) {
  console.log(`[e2e ${((Date.now() - started) / 1000).toFixed(1)}s] ${msg}`);
}

// ---- the test wallet -------------------------------------------------------------------

function checksum(hexAddr) {
  const lower = hexAddr.toLowerCase().replace(/^0x/, '');
  const hash = bytesToHex(keccak_256(new TextEncoder().encode(lower)));
  return '0x' + [...lower].map((c, i) => (parseInt(hash[i], 16) >= 8 ? c.toUpperCase() : c)).join('');
}

function testWallet() {
  const key = secp256k1.utils.randomPrivateKey();
  const pub = secp256k1.getPublicKey(key, false).slice(1);
  const address = checksum('0x' + bytesToHex(keccak_256(pub).slice(-20)));
  /** EIP-191 personal_sign of the bytes `hexData` names: r || s || v (27/28). */
  function personalSign(hexData) {
    const msg = hexToBytes(hexData.replace(/^0x/, ''));
    const prefix = new TextEncoder().encode(`\x19Ethereum Signed Message:\n${msg.length}`);
    const digest = keccak_256(new Uint8Array([...prefix, ...msg]));
    const sig = secp256k1.sign(digest, key);
    return '0x' + sig.toCompactHex() + (27 + sig.recovery).toString(16).padStart(2, '0');
  }
  return { address, personalSign };
}

// ---- the server ------------------------------------------------------------------------

/** Kills every process whose command line names `dir` (the guests of this run's data dir). */
function killMentioning(dir) {
  for (const pid of readdirSync('/proc').filter((p) => /^\d+$/.test(p))) {
    if (Number(pid) === process.pid) continue;
    try {
      const cmd = readFileSync(`/proc/${pid}/cmdline`, 'utf8');
      if (cmd.includes(dir)) process.kill(Number(pid), 'SIGKILL');
    } catch {
      // Gone already, or not ours to read.
    }
  }
}

async function startServer(dataDir) {
  const child = spawn(BIN, ['up', '--listen', '127.0.0.1:0', '--node-api-listen', '127.0.0.1:0', '--data-dir', dataDir], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, RUST_LOG: process.env.RUST_LOG ?? 'warn' },
  });
  let stderrTail = '';
  child.stderr.on('data', (d) => {
    stderrTail = (stderrTail + d.toString()).slice(-4000);
  });
  const lines = createInterface({ input: child.stdout });
  const url = await new Promise((ok, fail) => {
    const t = setTimeout(() => fail(new Error(`vmfleet up printed no URL in 60 s:\n${stderrTail}`)), 60_000);
    child.on('exit', (code) => fail(new Error(`vmfleet up exited with ${code}:\n${stderrTail}`)));
    lines.on('line', (l) => {
      const m = /(http:\/\/127\.0\.0\.1:\d+)/.exec(l);
      if (m) {
        clearTimeout(t);
        ok(m[1]);
      }
    });
  });
  return { child, url, stderr: () => stderrTail };
}

async function waitFor(what, fn, timeoutMs, everyMs = 500) {
  const deadline = Date.now() + timeoutMs;
  let last;
  while (Date.now() < deadline) {
    try {
      const v = await fn();
      if (v) return v;
    } catch (e) {
      last = e;
    }
    await new Promise((r) => setTimeout(r, everyMs));
  }
  throw new Error(`timed out waiting for ${what}${last ? `: ${last.message}` : ''}`);
}

// ---- the run ---------------------------------------------------------------------------

async function main() {
  const work = mkdtempSync(join(tmpdir(), 'vmfleet-e2e-'));
  const dataDir = join(work, 'data');
  mkdirSync(SHOTS, { recursive: true });
  rmSync(join(SHOTS, 'failure.png'), { force: true });
  let server;
  let browser;
  const pageErrors = [];
  try {
    server = await startServer(dataDir);
    log(`vmfleet up at ${server.url}`);
    const admin = readFileSync(join(dataDir, 'admin.token'), 'utf8').trim();
    await waitFor(
      'the local node to come ONLINE',
      async () => {
        const r = await fetch(`${server.url}/nodes`, { headers: { authorization: `Bearer ${admin}` } });
        const nodes = await r.json();
        return Array.isArray(nodes) && nodes.some((n) => n.status === 'ONLINE');
      },
      60_000,
    );

    browser = await chromium.launch({ executablePath: CHROMIUM, headless: process.env.VMFLEET_E2E_HEADFUL !== '1', args: FLAGS });
    const context = await browser.newContext({ viewport: { width: 1280, height: 1000 } });
    const wallet = testWallet();
    await context.exposeBinding('__vmfleetTestSign', (_src, hexData) => wallet.personalSign(hexData));
    await context.addInitScript((address) => {
      window.ethereum = {
        isVmfleetTestWallet: true,
        async request({ method, params }) {
          switch (method) {
            case 'eth_requestAccounts':
            case 'eth_accounts':
              return [address.toLowerCase()];
            case 'eth_chainId':
              return '0x1';
            case 'personal_sign':
              if (String(params[1]).toLowerCase() !== address.toLowerCase()) throw new Error('unknown account');
              return window.__vmfleetTestSign(params[0]);
            default:
              throw Object.assign(new Error(`method ${method} is not supported`), { code: 4200 });
          }
        },
      };
    }, wallet.address);
    const page = await context.newPage();
    page.on('pageerror', (e) => pageErrors.push(String(e)));
    page.on('console', (m) => {
      if (m.type() === 'error') log(`browser console error: ${m.text()}`);
    });
    page.setDefaultTimeout(30_000);

    // Sign in with the wallet.
    await page.goto(server.url);
    await page.getByRole('button', { name: 'Sign in with wallet' }).click();
    await page.getByRole('heading', { name: 'Virtual machines' }).waitFor();
    await page.getByText(wallet.address).waitFor();
    log(`signed in as ${wallet.address}`);

    // Create a VM: first with a size the API refuses, its message shown by the field.
    const name = `e2e-${Math.random().toString(36).slice(2, 8)}`;
    await page.getByRole('link', { name: 'New VM' }).first().click();
    await page.locator('input[name=name]').fill(name);
    await page.locator('input[name=mem_size_mib]').fill('1');
    await page.getByRole('button', { name: 'Create' }).click();
    const inline = page.locator('[data-field-error=mem_size_mib]');
    await inline.waitFor();
    const inlineText = await inline.textContent();
    if (!/mem_size_mib must be between 64/.test(inlineText ?? '')) throw new Error(`unexpected inline message: ${inlineText}`);
    log(`the API's validation message is shown inline: "${inlineText}"`);
    await page.locator('select[name=size]').selectOption('small');
    await page.getByRole('button', { name: 'Create' }).click();
    await page.waitForURL(`**/vms/${wallet.address}/${name}`, { timeout: 120_000 });
    log(`created ${name}`);

    // It runs.
    await page.locator(`h1 [data-state=running]`).waitFor({ timeout: 180_000 });
    log('the VM is running');

    // The console answers.
    const terminal = page.getByTestId('terminal');
    await page.locator('.console [data-connection=open]').waitFor({ timeout: 60_000 });
    const marker = `hi-${Math.random().toString(36).slice(2, 10)}`;
    // The terminal's visible rows as text (xterm.js renders spaces as U+00A0).
    const rows = async () => (await page.locator('.xterm-rows > div').allTextContents()).map((r) => r.replace(/\u00a0/g, ' ').trimEnd());
    // The shell's answer: a row `... echo hi-x` directly followed by a row `hi-x` (the echo of
    // the typed line alone is never taken for the answer).
    const answered = (lines) => lines.some((r, i) => r.endsWith(`echo ${marker}`) && lines[i + 1]?.trim() === marker);
    // Typed again every few seconds until the shell (which may still be booting) answers.
    await waitFor(
      `the guest to print ${marker}`,
      async () => {
        await terminal.click();
        await page.keyboard.type(`echo ${marker}`);
        await page.keyboard.press('Enter');
        try {
          await waitFor('the answer', async () => answered(await rows()), 5_000, 250);
          return true;
        } catch {
          return false;
        }
      },
      120_000,
      0,
    );
    log(`the console printed ${marker}`);

    // The metrics charts draw points.
    await waitFor(
      'the CPU chart to have two points',
      async () => Number(await page.locator('[data-chart=cpu]').getAttribute('data-points')) >= 2,
      60_000,
    );
    const painted = await page.locator('[data-chart=cpu] canvas').evaluate((c) => {
      const ctx = c.getContext('2d');
      const px = ctx.getImageData(0, 0, c.width, c.height).data;
      let n = 0;
      for (let i = 3; i < px.length; i += 4) if (px[i] !== 0) n++;
      return n;
    });
    if (painted < 50) throw new Error(`the CPU chart's canvas is nearly blank (${painted} pixels)`);
    log(`the metrics charts draw (${painted} pixels painted on the CPU chart)`);
    const detailShot = join(SHOTS, 'vm-detail.png');
    await page.screenshot({ path: detailShot, fullPage: true });

    // A reload restores the console's screen from the server's scrollback.
    await page.reload();
    await page.locator('h1 [data-state=running]').waitFor();
    await page.locator('.console [data-connection=open]').waitFor();
    await waitFor('the restored screen to show the answer', async () => answered(await rows()), 30_000, 250);
    log('after a reload the console screen is restored');

    // Suspend and resume: commands over the WebSocket, settled by their responses.
    await page.getByRole('button', { name: 'Suspend', exact: true }).click();
    await page.locator('h1 [data-state=paused]').waitFor({ timeout: 60_000 });
    await page.getByTestId('notice').filter({ hasText: 'suspend done' }).waitFor();
    await page.getByRole('button', { name: 'Resume', exact: true }).click();
    await page.locator('h1 [data-state=running]').waitFor({ timeout: 60_000 });
    await page.getByTestId('notice').filter({ hasText: 'resume done' }).waitFor();
    log('suspended and resumed over the WebSocket');

    // A snapshot, listed from its node (id, time, size); the VM forced off and restored from
    // it (it runs again); the snapshot deleted there.
    await page.getByRole('button', { name: 'Snapshot', exact: true }).click();
    const snapRow = page.getByTestId('snapshots').locator('tbody tr').first();
    await snapRow.waitFor({ timeout: 120_000 });
    const snapId = ((await snapRow.locator('td').first().textContent()) ?? '').trim();
    log(`snapshot ${snapId} listed: ${(await snapRow.textContent()) ?? ''}`);
    const snapshotsShot = join(SHOTS, 'vm-snapshots.png');
    await page.getByTestId('snapshots').screenshot({ path: snapshotsShot });
    await page.getByRole('button', { name: 'Force stop', exact: true }).click();
    await page.locator('h1 [data-state=stopped]').waitFor({ timeout: 60_000 });
    await page.getByRole('button', { name: `Restore snapshot ${snapId}` }).click();
    await page.locator('h1 [data-state=running]').waitFor({ timeout: 120_000 });
    log(`restored from ${snapId}: running`);
    await page.getByRole('button', { name: `Delete snapshot ${snapId}` }).click();
    await page.getByTestId('notice').filter({ hasText: `snapshot ${snapId} deleted` }).waitFor({ timeout: 60_000 });
    await page.getByTestId('snapshots').waitFor({ state: 'detached', timeout: 30_000 });
    log('the snapshot is deleted');

    // Stop it, then delete it (with its confirmation).
    await page.getByRole('button', { name: 'Stop', exact: true }).click();
    await page.getByTestId('progress').waitFor();
    await page.locator('h1 [data-state=stopped]').waitFor({ timeout: 120_000 });
    log('the VM stopped');
    await page.getByRole('button', { name: 'Delete', exact: true }).click();
    await page.getByRole('button', { name: 'Yes, delete' }).click();
    await page.getByRole('heading', { name: 'Virtual machines' }).waitFor({ timeout: 120_000 });
    await page.locator(`[data-vm="${name}"]`).waitFor({ state: 'detached' });
    log('the VM was deleted');

    // The nodes page, as the admin of `vmfleet up`.
    await page.getByRole('button', { name: 'Sign out' }).click();
    await page.locator('textarea[name=token]').fill(admin);
    await page.getByRole('button', { name: 'Use this token' }).click();
    await page.getByRole('heading', { name: 'Virtual machines' }).waitFor();
    await page.getByRole('link', { name: 'Nodes' }).click();
    const row = page.locator('[data-testid=node-list] tbody tr').first();
    await row.locator('[data-state=ONLINE]').waitFor();
    await waitFor('the node metrics', async () => (await row.textContent()).includes('%'), 30_000);
    const nodesShot = join(SHOTS, 'nodes.png');
    await page.screenshot({ path: nodesShot, fullPage: true });
    await row.getByRole('button', { name: 'Drain' }).click();
    await row.locator('[data-state=MAINTENANCE]').waitFor();
    await row.getByRole('button', { name: 'Undrain' }).click();
    await row.locator('[data-state=ONLINE]').waitFor();
    log('the node drained and undrained');

    if (pageErrors.length) throw new Error(`the page threw:\n${pageErrors.join('\n')}`);
    console.log(`screenshots: ${detailShot} ${snapshotsShot} ${nodesShot}`);
    log('PASS');
  } catch (e) {
    if (browser) {
      const pages = browser.contexts().flatMap((c) => c.pages());
      if (pages[0]) {
        const failShot = join(SHOTS, 'failure.png');
        await pages[0].screenshot({ path: failShot, fullPage: true }).catch(() => {});
        console.error(`failure screenshot: ${failShot}`);
      }
    }
    if (server) console.error(`vmfleet up's last log lines:\n${server.stderr()}`);
    if (pageErrors.length) console.error(`page errors:\n${pageErrors.join('\n')}`);
    throw e;
  } finally {
    await browser?.close().catch(() => {});
    if (server) {
      server.child.kill('SIGTERM');
      await new Promise((r) => setTimeout(r, 1000));
      server.child.kill('SIGKILL');
    }
    killMentioning(work);
    rmSync(work, { recursive: true, force: true });
  }
}

main().then(
  () => process.exit(0),
  (e) => {
    console.error(`[e2e] FAIL: ${e.stack ?? e}`);
    process.exit(1);
  },
);
