// Command kubetools is one multi-call binary holding the Kubernetes control plane that
// scripts/kube-up runs: kube-apiserver, kube-controller-manager, kube-scheduler, etcd,
// kubectl and helm. One binary links once (linking each of them alone costs a minute or
// more on two cores). It picks the tool by the name it is called by (a symlink), or by its
// first argument: `kubetools kube-apiserver --etcd-servers=...`.
//
// Every version is pinned in go.mod; nothing built here is committed.
package main

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	_ "time/tzdata" // CronJob time zones, as the upstream commands do

	"go.etcd.io/etcd/server/v3/etcdmain"
	helmcmd "helm.sh/helm/v4/pkg/cmd"
	helmkube "helm.sh/helm/v4/pkg/kube"
	_ "k8s.io/client-go/plugin/pkg/client/auth"
	"k8s.io/component-base/cli"
	"k8s.io/component-base/logs"
	_ "k8s.io/component-base/logs/json/register"
	_ "k8s.io/component-base/metrics/prometheus/clientgo"
	_ "k8s.io/component-base/metrics/prometheus/version"
	kubectlcmd "k8s.io/kubectl/pkg/cmd"
	kubectlutil "k8s.io/kubectl/pkg/cmd/util"
	apiserver "k8s.io/kubernetes/cmd/kube-apiserver/app"
	controllermanager "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	scheduler "k8s.io/kubernetes/cmd/kube-scheduler/app"
)

var tools = map[string]func(){
	"kube-apiserver":          func() { os.Exit(cli.Run(apiserver.NewAPIServerCommand())) },
	"kube-controller-manager": func() { os.Exit(cli.Run(controllermanager.NewControllerManagerCommand())) },
	"kube-scheduler":          func() { os.Exit(cli.Run(scheduler.NewSchedulerCommand())) },
	"etcd":                    func() { etcdmain.Main(os.Args) },
	"kubectl":                 kubectl,
	"helm":                    helm,
}

func main() {
	name := filepath.Base(os.Args[0])
	if _, ok := tools[name]; !ok && len(os.Args) > 1 {
		// `kubetools TOOL ARGS...`: the tool sees itself called as TOOL.
		name = os.Args[1]
		os.Args = append([]string{name}, os.Args[2:]...)
	}
	run, ok := tools[name]
	if !ok {
		fmt.Fprintln(os.Stderr, "usage: kubetools {kube-apiserver|kube-controller-manager|kube-scheduler|etcd|kubectl|helm} [ARGS...]")
		os.Exit(2)
	}
	run()
}

func kubectl() {
	// As upstream kubectl: set the verbosity before the command is built (it reads .kuberc).
	logs.GlogSetter(kubectlcmd.GetLogVerbosity(os.Args)) // nolint:errcheck
	if err := cli.RunNoErrOutput(kubectlcmd.NewDefaultKubectlCommand()); err != nil {
		kubectlutil.CheckErr(err)
	}
}

func helm() {
	helmkube.ManagedFieldsManager = "helm"
	cmd, err := helmcmd.NewRootCmd(os.Stdout, os.Args[1:], helmcmd.SetupLogging)
	if err != nil {
		slog.Warn("command failed", slog.Any("error", err))
		os.Exit(1)
	}
	if err := cmd.Execute(); err != nil {
		if cerr, ok := errors.AsType[helmcmd.CommandError](err); ok {
			os.Exit(cerr.ExitCode)
		}
		os.Exit(1)
	}
}
