import { useState, type FormEvent } from 'react';
import { describe } from '../api/client';
import { sessionFromToken, walletSignIn, type Eip1193Provider } from '../auth';
import { ErrorBanner } from '../components/common';
import { useRouter } from '../router';
import { useSession } from '../session';

declare global {
  interface Window {
    ethereum?: Eip1193Provider;
  }
}

export function SignIn() {
  const { client, setSession } = useSession();
  const { navigate } = useRouter();
  const [busy, setBusy] = useState<string | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [pasted, setPasted] = useState('');
  const provider = window.ethereum;

  async function withWallet() {
    if (!provider) return;
    setError(null);
    setBusy('Waiting for the wallet to sign…');
    try {
      const s = await walletSignIn(provider, client);
      setSession(s);
      navigate('/');
    } catch (e) {
      setError(`Sign-in failed: ${describe(e)}`);
    } finally {
      setBusy(null);
    }
  }

  async function withToken(e: FormEvent) {
    e.preventDefault();
    setError(null);
    try {
      const s = sessionFromToken(pasted);
      setBusy('Checking the token…');
      // Ask the server: a token it refuses is said so here, not on the next page.
      await client.withToken(s.token).listVms();
      setSession(s);
      navigate('/');
    } catch (err) {
      setError(`This token does not work: ${describe(err)}`);
    } finally {
      setBusy(null);
    }
  }

  return (
    <main className="narrow">
      <h1>Sign in to vmfleet</h1>
      <ErrorBanner error={error} onDismiss={() => setError(null)} />
      {busy && <p className="progress">{busy}</p>}
      <section className="card">
        <h2>With your wallet</h2>
        <p className="muted">Your wallet signs a Sign-In with Ethereum message for {window.location.host}; nothing is sent on chain.</p>
        <button type="button" className="primary" disabled={!provider || busy !== null} onClick={() => void withWallet()}>
          Sign in with wallet
        </button>
        {!provider && <p className="muted">No wallet found in this browser (window.ethereum).</p>}
      </section>
      <section className="card">
        <h2>With a token</h2>
        <p className="muted">
          Paste a token: the admin token that <code>vmfleet up</code> writes to <code>DATA_DIR/admin.token</code>, or a sign-in token.
        </p>
        <form onSubmit={(e) => void withToken(e)}>
          <textarea name="token" rows={3} value={pasted} onChange={(e) => setPasted(e.target.value)} placeholder="eyJhbGciOi…" />
          <button type="submit" disabled={busy !== null}>
            Use this token
          </button>
        </form>
      </section>
    </main>
  );
}
