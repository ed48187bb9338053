import { createContext, useContext, useMemo, useState, type ReactNode } from 'react';
import { Client } from './api/client';
import { loadSession, saveSession, type Session } from './auth';

interface SessionContextValue {
  session: Session | null;
  client: Client;
  setSession(s: Session | null): void;
}

const SessionContext = createContext<SessionContextValue | null>(null);

export function SessionProvider({ children }: { children: ReactNode }) {
  const [session, set] = useState<Session | null>(loadSession);
  const client = useMemo(() => new Client({ token: session?.token ?? null }), [session]);
  const value = useMemo(
    () => ({
      session,
      client,
      setSession(s: Session | null) {
        saveSession(s);
        set(s);
      },
    }),
    [session, client],
  );
  return <SessionContext.Provider value={value}>{children}</SessionContext.Provider>;
}

export function useSession(): SessionContextValue {
  const v = useContext(SessionContext);
  if (!v) throw new Error('useSession outside SessionProvider');
  return v;
}
