// libcni-client drives a CNI network list exactly as a container runtime does (containerd
// and CRI-O use the same library): ADD, CHECK and DEL with runtime capabilities such as
// portMappings, results cached on disk between calls.
//
// Usage: libcni-client <add|check|del|validate> <conflist> <containerID> <netns> <ifname> <cacheDir> [portMappingsJSON]
// CNI_PATH (colon-separated) says where the plugins are. ADD prints the result as JSON.
//
// Built offline by the tests: GOPATH=<tmp>:/usr/share/gocode GO111MODULE=off go build.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"

	"github.com/containernetworking/cni/libcni"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintf(os.Stderr, "libcni-client: %v\n", err)
		os.Exit(1)
	}
}

func run() error {
	if len(os.Args) < 7 {
		return fmt.Errorf("usage: %s <add|check|del|validate> <conflist> <containerID> <netns> <ifname> <cacheDir> [portMappingsJSON]", os.Args[0])
	}
	cmd, confPath, cid, netns, ifname, cacheDir := os.Args[1], os.Args[2], os.Args[3], os.Args[4], os.Args[5], os.Args[6]
	list, err := libcni.ConfListFromFile(confPath)
	if err != nil {
		return fmt.Errorf("loading %s: %w", confPath, err)
	}
	cni := libcni.NewCNIConfigWithCacheDir(filepath.SplitList(os.Getenv("CNI_PATH")), cacheDir, nil)
	rt := &libcni.RuntimeConf{
		ContainerID: cid,
		NetNS:       netns,
		IfName:      ifname,
		Args: [][2]string{
			{"IgnoreUnknown", "1"},
			{"K8S_POD_NAMESPACE", "default"},
			{"K8S_POD_NAME", "libcni-pod"},
		},
		CapabilityArgs: map[string]interface{}{},
	}
	if len(os.Args) > 7 {
		var pm []map[string]interface{}
		if err := json.Unmarshal([]byte(os.Args[7]), &pm); err != nil {
			return fmt.Errorf("portMappings: %w", err)
		}
		rt.CapabilityArgs["portMappings"] = pm
	}
	ctx := context.Background()
	switch cmd {
	case "add":
		res, err := cni.AddNetworkList(ctx, list, rt)
		if err != nil {
			return fmt.Errorf("ADD: %w", err)
		}
		out, err := json.Marshal(res)
		if err != nil {
			return err
		}
		fmt.Println(string(out))
	case "check":
		if err := cni.CheckNetworkList(ctx, list, rt); err != nil {
			return fmt.Errorf("CHECK: %w", err)
		}
	case "del":
		if err := cni.DelNetworkList(ctx, list, rt); err != nil {
			return fmt.Errorf("DEL: %w", err)
		}
	case "validate":
		if _, err := cni.ValidateNetworkList(ctx, list); err != nil {
			return fmt.Errorf("VALIDATE: %w", err)
		}
	default:
		return fmt.Errorf("unknown command %q", cmd)
	}
	return nil
}
