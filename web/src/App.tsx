import { CreateVm } from './pages/CreateVm';
import { Nodes } from './pages/Nodes';
import { SignIn } from './pages/SignIn';
import { VmDetail } from './pages/VmDetail';
import { VmList } from './pages/VmList';
import { Link, useRouter } from './router';
import { useSession } from './session';

function Page() {
  const { loc } = useRouter();
  const { session } = useSession();
  if (!session || loc.path === '/sign-in') return <SignIn />;
  const vm = /^\/vms\/([^/]+)\/([^/]+)\/?$/.exec(loc.path);
  if (vm) return <VmDetail key={loc.path} owner={decodeURIComponent(vm[1])} name={decodeURIComponent(vm[2])} />;
  switch (loc.path) {
    case '/':
      return <VmList />;
    case '/new':
      return <CreateVm />;
    case '/admin/nodes':
      return <Nodes />;
    default:
      return (
        <main>
          <h1>Not found</h1>
          <p>
            There is no page at <code>{loc.path}</code>. <Link to="/">Back to the VMs</Link>
          </p>
        </main>
      );
  }
}

export function App() {
  const { session, setSession } = useSession();
  const { navigate } = useRouter();
  return (
    <>
      <nav className="top">
        <Link to="/" className="brand">
          vmfleet
        </Link>
        {session && (
          <>
            <Link to="/">VMs</Link>
            <Link to="/new">New VM</Link>
            {session.role !== 'standard' && session.role !== 'privileged' && <Link to="/admin/nodes">Nodes</Link>}
            <span className="spacer" />
            <span className="who mono" title={`role: ${session.role}`}>
              {session.address ?? 'operator'} ({session.role})
            </span>
            <button
              type="button"
              className="link"
              onClick={() => {
                setSession(null);
                navigate('/sign-in');
              }}
            >
              Sign out
            </button>
          </>
        )}
      </nav>
      <Page />
    </>
  );
}
